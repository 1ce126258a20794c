"""Exception hierarchy of vpr_ros: every error names the problem it found."""


class VprError(Exception):
    """Base class of every error raised by vpr_ros."""


class ConfigError(VprError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class ImageDecodeError(VprError, ValueError):
    """An image buffer or file cannot be decoded (bad encoding, size, step or data)."""


class CheckpointError(VprError):
    """A checkpoint file is missing, corrupt, forged or does not match the model."""


class MapError(VprError):
    """Base class of map database errors."""


class MapFormatError(MapError):
    """A map directory is missing files, truncated, corrupt or of an unknown format."""


class MapMismatchError(MapError):
    """A map was built by another model, or inputs do not match its dimensions."""


class BagError(VprError):
    """A rosbag2 file cannot be read or lacks the requested topics."""


class DatasetError(VprError):
    """A dataset folder or ground-truth file is malformed."""


class ImageEncodeError(VprError, ValueError):
    """An array cannot be encoded as an image (not [H, W, 3] uint8, unknown encoding or format)."""


class MapChangedError(MapFormatError):
    """A map directory was replaced by a concurrent save while it was being loaded; load again."""


class MapWriteError(MapError, OSError):
    """A map could not be written (disk full, file size limit, read-only or missing directory)."""


class BackendError(VprError):
    """An inference backend (onnxruntime, an execution provider, an exported graph) is unusable."""
