"""Release weights: one safetensors file holding fp16 tensors and the JSON config.

``load(name_or_path)`` accepts a registered name (built-in models ship inside the package,
checked against their sha256) or a path to a ``.safetensors`` file. No pickle is involved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import CodecConfig
from .errors import CodecError
from .model import Codec

FORMAT = "rvqcodec-weights-1"
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class RegisteredModel:
    file: str
    sha256: str
    description: str


REGISTRY: dict[str, RegisteredModel] = {
    "rvq24k-v0": RegisteredModel(
        "rvq24k-v0.safetensors",
        "6e6e2acc65015f33f99f6fc67f9c8b35047d5ac60759d5efab9f1cfb760de03a",
        "24 kHz mono, 1.5-24 kbps (interim: reconstruction losses only, CPU-trained)",
    ),
}
DEFAULT_MODEL = "rvq24k-v0"
ALIASES = {"rvq24k": "rvq24k-v0", "default": DEFAULT_MODEL}


class ModelError(CodecError):
    """A model name or file that cannot be loaded."""


def fingerprint(model: Codec) -> bytes:
    """sha256 over the model's weights (names and float32 values), independent of file format."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().contiguous().numpy().tobytes())
    return h.digest()


def save_model(model: Codec, path: Path, extra: dict[str, str] | None = None) -> None:
    """Write fp16 weights + config (safetensors metadata) to ``path`` atomically."""
    path = Path(path)
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()
    }
    meta = {"format": FORMAT, "config": model.cfg.to_json(), **(extra or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    tmp.replace(path)


def load(name_or_path: str | Path | None = None) -> Codec:
    """A ready-to-use model in eval mode: a registered name (default ``rvq24k``) or a file path."""
    key = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    key = ALIASES.get(key, key)
    if key in REGISTRY:
        entry = REGISTRY[key]
        path = WEIGHTS_DIR / entry.file
        if not path.exists():
            raise ModelError(f"built-in model {key!r} is missing its weights file {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if entry.sha256 != digest:
            raise ModelError(f"built-in model {key!r} failed its sha256 check ({path})")
    else:
        path = Path(key)
        if not path.exists():
            names = ", ".join(sorted(REGISTRY))
            raise ModelError(f"unknown model {key!r}: not a file, and not one of the built-in models ({names})")
    return _load_file(path)


def _load_file(path: Path) -> Codec:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ModelError(f"cannot read model weights from {path}: {str(exc).splitlines()[0]}") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ModelError(f"{path} is not an rvqcodec model file")
    model = Codec(CodecConfig.from_dict(json.loads(meta["config"])))
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not match its own config: {str(exc).splitlines()[0]}") from None
    return model.eval()
