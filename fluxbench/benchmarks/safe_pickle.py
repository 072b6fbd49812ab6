"""Reading data-set pickles without letting them run code.

``pickle.load`` imports and calls whatever a file names, so a tampered data file could
run anything. Data-set pickles (the CIFAR "python version") only need dicts, lists,
strings, numbers and numpy arrays, so :class:`RestrictedUnpickler` resolves exactly the
globals that numpy arrays pickle through and refuses every other import.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from fluxbench.errors import DataError

# (module, name) pairs a numpy array or scalar pickles through, under numpy 1 and numpy 2 names.
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [(module, name) for module in _MULTIARRAY for name in ("_reconstruct", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    # protocol 0-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1")
    + [("_codecs", "encode")]
)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the numpy globals that array data needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refused to import {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path, hint: str = "") -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a one-line :class:`DataError`.

    ``encoding="latin1"`` reads the Python 2 pickles the CIFAR archives ship (their numpy
    buffers are byte strings); ``hint`` says how to get a good copy of the file.
    """
    suffix = f"; {hint}" if hint else ""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist{suffix}") from None
    except UnsafePickleError as err:
        raise DataError(f"{path} is not a plain data pickle ({err}); not loading it{suffix}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}){suffix}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}{suffix}") from None
