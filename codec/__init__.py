"""rvqcodec: a streaming neural audio codec (causal SEANet + residual vector quantizer).

Quick use::

    from codec import load
    model = load()                        # built-in default model, offline
    codes = model.encode(wav, kbps=6)     # wav [B, C, T] float at model.sample_rate
    out = model.decode(codes)             # model.cfg.output_delay samples behind wav (README)
"""

from .config import CodecConfig
from .errors import ClippingWarning, CodecError, ModelBusyError
from .files import compress_file, decompress_file, read_info
from .model import Codec
from .weights import DEFAULT_MODEL, REGISTRY, load, save_model

__all__ = [
    "ClippingWarning", "Codec", "CodecConfig", "CodecError", "DEFAULT_MODEL", "ModelBusyError", "REGISTRY",
    "compress_file", "decompress_file", "load", "read_info", "save_model",
]
__version__ = "0.1.0"
