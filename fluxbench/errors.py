"""One exception family for everything a user can get wrong.

The CLI catches :class:`FluxbenchError`, prints its message on one line and exits
non-zero; anything else is a bug and keeps its traceback.
"""


class FluxbenchError(Exception):
    """A problem with the user's input, data or configuration (one-line message)."""


class ConfigError(FluxbenchError):
    """An unknown name, an out-of-range value or an inconsistent configuration."""


class DataError(FluxbenchError):
    """Missing, corrupt or inconsistent data on disk."""


class DivergedError(FluxbenchError):
    """The training loss became NaN or infinite."""


class LeakageError(FluxbenchError):
    """Tuning and evaluation data share samples."""
