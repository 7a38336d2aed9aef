"""The package's errors, in one place (a leaf module every layer may import).

Everything a person can fix (a config key, a path, a data set, a weights file, a checkpoint, a run folder) raises a
:class:`UserError` subclass: the ``ivit`` command prints it in one line and exits with status 2. Anything else is
a bug and keeps its traceback. The user errors also subclass the builtin a caller would expect (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""


class InstructionViTError(Exception):
    """Base of every error this package raises on purpose."""


class UserError(InstructionViTError):
    """Input a person can fix; the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config file, key, value or command-line argument that cannot be used."""


class DataError(UserError, ValueError):
    """Data that cannot be used as given (missing files, unreadable images, empty splits, class mismatches)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class WeightsError(UserError, ValueError):
    """Weights that do not fit the model they are given to (the run stops; nothing trains from random init)."""


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights could not be fetched (offline, or a tag that does not exist); says what to pass."""


class DiskFullError(UserError, OSError):
    """No space left to write a file; the file it would have replaced is whole."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used, with the reason."""


class RunFolderError(UserError, ValueError):
    """The run folder cannot be used as asked (exists without --resume/--force, or nothing to resume)."""


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ExportError(UserError, RuntimeError):
    """An export that does not reproduce the PyTorch model, or cannot be made; nothing was written."""


__all__ = ["CheckpointError", "ConfigError", "DataError", "DiskFullError", "ExportError", "InstructionViTError",
           "MissingFileError", "NonFiniteLossError", "RunFolderError", "UserError", "WeightsError",
           "WeightsUnavailableError"]
