"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class CodecError(ValueError):
    """Base class of every error caused by user input (files, options, models)."""


class ClippingWarning(UserWarning):
    """Decoded samples beyond full scale were clipped to the 16-bit range of the output."""


class ModelBusyError(CodecError, RuntimeError):
    """A model object asked for a second stream, or by another thread while it streams."""
