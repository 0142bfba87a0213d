"""User-facing errors: each carries a one-line message naming the key, case or file at fault."""


class Unet3dError(Exception):
    """Base class of errors that end a job with one ERROR line and a non-zero exit."""


class ConfigError(Unet3dError):
    """A config value is missing or out of range; the message starts with the dotted key."""


class DataError(Unet3dError):
    """A case or file is missing, unreadable or inconsistent; the message names case and file."""


class DeviceError(Unet3dError):
    """The requested device, precision or strategy is not available on this machine."""


class CheckpointError(Unet3dError):
    """A checkpoint is missing or does not match the model."""


class ExportError(Unet3dError):
    """An export failed: a converter failed, or an exported file's output differs from the
    Keras model's by more than the tolerance; the message names the format and the difference."""


class RunFolderError(Unet3dError):
    """A run folder cannot be used by this job (it holds another run, or a resume differs)."""


class StorageError(Unet3dError, OSError):
    """A file cannot be written: the disk is full, a quota is reached, or the folder is
    read-only or not writable. Nothing later can be written there either, so the job stops at
    once (``mode=predict`` does not go on with the next case); files written before are intact.

    ``errno`` and ``filename`` are those of the underlying ``OSError``; ``str()`` is the one-line
    message (naming the file).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
