"""Errors a user can fix: each message is one sentence naming the key and the fix."""


class MicrotrainError(Exception):
    """Raised for bad input; the CLI prints the message on one line and exits non-zero."""


class ConfigError(MicrotrainError, ValueError):
    """A config value is missing, of the wrong type or out of range (a ValueError, for Python callers)."""


class FolderBusy(ConfigError):
    """Another run holds the run folder's lock: nothing of this run may be written there."""


class DataError(MicrotrainError, ValueError):
    """The data cannot be read or does not fit the model."""


class DeviceError(MicrotrainError):
    """The requested device or precision is not available here."""


class WriteFailed(MicrotrainError):
    """A file could not be written: a full disk, a read-only folder, no permission."""


class TrainingDiverged(MicrotrainError):
    """The loss or a gradient became NaN or infinite."""


class Interrupted(MicrotrainError):
    """SIGTERM, SIGINT or SLURM's pre-emption signal stopped the run; ``signum`` says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
