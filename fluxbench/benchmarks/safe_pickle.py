"""Reading data-set pickles without letting them run code.

``pickle.load`` imports and calls whatever a file names, so a tampered data file could
run anything. Data-set pickles (the CIFAR "python version") only need dicts, lists,
strings, numbers and numpy arrays. :class:`RestrictedUnpickler` therefore refuses every
global except the handful that numpy arrays pickle through, and even those never reach
numpy: they resolve to inert stand-ins that only record their arguments. After loading,
:func:`load_pickle` checks each recorded array (plain numeric dtype, a shape that matches
the byte count) and builds it with ``np.frombuffer``. A corrupt or hostile file thus
gives a one-line :class:`~fluxbench.errors.DataError`, never code execution or a crash
inside numpy's own unpickling.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from fluxbench.errors import DataError

_DTYPE_SPEC = re.compile(r"^(b1|[iu][1248]|f[248]|c(8|16)|[SU]\d{1,6})$")
_BYTE_ORDERS = {"|": "|", "=": "=", "<": "<", ">": ">"}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class CorruptPickleError(pickle.UnpicklingError):
    """A recorded array or dtype does not describe valid plain data."""


class _NDArray:
    """Stands for ``numpy.ndarray`` when a pickle names it as the class to rebuild."""


class _Pending:
    """A numpy object named by the pickle, recorded and built only after checks."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def build(self) -> Any:  # pragma: no cover - every stand-in overrides it
        raise CorruptPickleError("unexpected object")


class _DType(_Pending):
    """``numpy.dtype(spec, align, copy)`` followed by ``__setstate__((version, byteorder, ...))``."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        self.spec = spec

    def build(self) -> np.dtype:
        if not isinstance(self.spec, str) or not _DTYPE_SPEC.match(self.spec):
            raise CorruptPickleError(f"dtype {self.spec!r} is not a plain numeric or string type")
        dtype = np.dtype(self.spec)
        order = self.state[1] if isinstance(self.state, tuple) and len(self.state) > 1 else "|"
        if order not in _BYTE_ORDERS:
            raise CorruptPickleError(f"dtype byte order {order!r} is not one of | = < >")
        return dtype if order in "|=" or dtype.itemsize == 1 else dtype.newbyteorder(order)


def _dtype_of(value: Any) -> np.dtype:
    if not isinstance(value, _DType):
        raise CorruptPickleError(f"expected a dtype, got {type(value).__name__}")
    return value.build()


def _raw_bytes(value: Any) -> bytes:
    if isinstance(value, str):  # Python 2 byte strings arrive decoded as latin1
        return value.encode("latin-1")
    if isinstance(value, (bytes, bytearray, pickle.PickleBuffer)):
        return bytes(value)
    raise CorruptPickleError(f"array data must be bytes, got {type(value).__name__}")


def _array(raw: Any, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise CorruptPickleError(f"array shape {shape!r} is not a tuple of sizes")
    data = _raw_bytes(raw)
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise CorruptPickleError(f"array of shape {shape} and dtype {dtype} needs "
                                 f"{math.prod(shape) * dtype.itemsize} bytes, the file holds {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


class _Reconstruct(_Pending):
    """``_reconstruct(ndarray, (0,), b"b")`` followed by ``__setstate__((1, shape, dtype, fortran, data))``."""

    def __init__(self, cls: Any, shape: Any = None, typecode: Any = None) -> None:
        if cls is not _NDArray:
            raise UnsafePickleError("refused to rebuild an array subclass")

    def build(self) -> np.ndarray:
        state = self.state
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise CorruptPickleError("array state is not (shape, dtype, fortran, data)")
        shape, dtype, fortran, raw = state
        return _array(raw, _dtype_of(dtype), shape, bool(fortran))


class _FromBuffer(_Pending):
    """``_frombuffer(buffer, dtype, shape, order)``: how protocol 5 pickles contiguous arrays."""

    def __init__(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> None:
        self.args = (buffer, dtype, shape, order)

    def build(self) -> np.ndarray:
        buffer, dtype, shape, order = self.args
        return _array(buffer, _dtype_of(dtype), shape, order == "F")


class _Scalar(_Pending):
    """``scalar(dtype, data)``: a numpy scalar such as ``np.float64(0.5)``."""

    def __init__(self, dtype: Any, data: Any = b"") -> None:
        self.args = (dtype, data)

    def build(self) -> Any:
        dtype = _dtype_of(self.args[0])
        return _array(self.args[1], dtype, (), False)[()]


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode(text, "latin1")``: how protocol 0-2 pickles written by Python 3 store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


_NUMPY = {"ndarray": _NDArray, "dtype": _DType}
_MULTIARRAY = {"_reconstruct": _Reconstruct, "scalar": _Scalar}
_ALLOWED: dict[tuple[str, str], Any] = {
    **{("numpy", name): obj for name, obj in _NUMPY.items()},
    **{(module, name): obj for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, obj in _MULTIARRAY.items()},
    **{(module, "_frombuffer"): _FromBuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("_codecs", "encode"): _latin1,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are inert stand-ins for numpy arrays, dtypes and scalars."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refused to import {module}.{name}")
        return _ALLOWED[(module, name)]


def _resolve(obj: Any, seen: set[int]) -> Any:
    """Replace every recorded stand-in in dicts, lists and tuples by the checked numpy object."""
    if isinstance(obj, _Pending):
        return obj.build()
    if isinstance(obj, (dict, list)):
        if id(obj) in seen:
            return obj
        seen.add(id(obj))
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in list(items):
            obj[key] = _resolve(value, seen)
        return obj
    if isinstance(obj, tuple):
        return tuple(_resolve(value, seen) for value in obj)
    return obj


def load_pickle(path: Path, hint: str = "") -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a one-line :class:`DataError`.

    ``encoding="latin1"`` reads the Python 2 pickles the CIFAR archives ship (their numpy
    buffers are byte strings); ``hint`` says how to get a good copy of the file.
    """
    suffix = f"; {hint}" if hint else ""
    try:
        with open(path, "rb") as handle:
            return _resolve(RestrictedUnpickler(handle, encoding="latin1").load(), set())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist{suffix}") from None
    except UnsafePickleError as err:
        raise DataError(f"{path} is not a plain data pickle ({err}); not loading it{suffix}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, RecursionError, MemoryError) as err:
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}){suffix}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}{suffix}") from None
