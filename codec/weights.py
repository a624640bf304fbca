"""Release weights: one safetensors file holding fp16 tensors and the JSON config.

``load(name_or_path)`` accepts a registered name (built-in models ship inside the package,
checked against their sha256) or a path to a ``.safetensors`` file. No pickle is involved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .config import CodecConfig
from .errors import CodecError
from .model import Codec
from .quantizer import ResidualVectorQuantizer

FORMAT = "rvqcodec-weights-1"
LOWBAND_FORMAT = "lowband-1"  # hashed with a model's lowband_levels (codec/lowband.py's layout)
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class RegisteredModel:
    """A built-in model: its weights file, that file's sha256, and what the registry changes in
    the file's config (``config``: pairs of field and value; a release that only changes what
    has no weights, such as the low band, shares its predecessor's file)."""

    file: str
    sha256: str
    description: str
    config: tuple[tuple[str, object], ...] = ()


# Weights files that more than one release reads (file, sha256).
V19_FILE = ("rvq24k-v19.safetensors", "c0e8954f6c822382d3296c30f588e026a3bbb890b6a9fb3835984cb10e425a4b")
V17_FILE = ("rvq24k-v17.safetensors", "432940042ec9f5aef9e4215c36fd00253edf9294790d73f5952859d1d3587eba")
# What the releases on v19's weights set in its config, each on top of the one before (no weights).
V20_SETTINGS = {"envelope_match": 1.0}
V21_SETTINGS = {**V20_SETTINGS, "lowband_coding": "arithmetic"}
V22_SETTINGS = {**V21_SETTINGS, "envelope_floor": 0.1}
V23_SETTINGS = {**V22_SETTINGS, "envelope_fill": 1.0}
V24_SETTINGS = {**V23_SETTINGS, "lowband_coding": "arithmetic-edge"}

REGISTRY: dict[str, RegisteredModel] = {
    "rvq24k-v24": RegisteredModel(
        *V19_FILE,
        "24 kHz mono, 1.5-24 kbps (the default; configs/general24k.yaml): rvq24k-v23's weights, "
        "its low band's words at 12 and 24 kbps also carrying the power of the bands around 8 kHz, "
        "which envelope matching makes with noise (lowband_coding arithmetic-edge, codec/edge.py); "
        "its own files",
        config=(("name", "rvq24k-v24"), *V24_SETTINGS.items()),
    ),
    "rvq24k-v23": RegisteredModel(
        *V19_FILE,
        "24 kHz mono, 1.5-24 kbps (interim): rvq24k-v22's weights, codes and files, its envelope "
        "matching filling with noise the power that its 12-dB gain limit leaves missing in bands "
        "from 8 kHz (envelope_fill 1.0, codec/envelope.py)",
        config=(("name", "rvq24k-v23"), *V23_SETTINGS.items()),
    ),
    "rvq24k-v22": RegisteredModel(
        *V19_FILE,
        "24 kHz mono, 1.5-24 kbps (interim): rvq24k-v21's weights, codes and files, its envelope "
        "matching comparing band powers down to a tenth of the log-mel floor (envelope_floor 0.1, "
        "codec/envelope.py), so that bands the decoder leaves below the floor are raised to the "
        "coded power",
        config=(("name", "rvq24k-v22"), *V22_SETTINGS.items()),
    ),
    "rvq24k-v21": RegisteredModel(
        *V19_FILE,
        "24 kHz mono, 1.5-24 kbps (interim): rvq24k-v20 (v19's weights, envelope matching) with the "
        "low band's coefficients arithmetic-coded in the same bits, in finer steps (12 and 24 kbps; "
        "codec/lowband.py); 1.5-6 kbps as v20",
        config=(("name", "rvq24k-v21"), *V21_SETTINGS.items()),
    ),
    "rvq24k-v20": RegisteredModel(
        *V19_FILE,
        "24 kHz mono, 1.5-24 kbps (interim): rvq24k-v19's weights and codes, whose decoded audio "
        "is pulled band by band onto the log-mel spectrum the codes carry (envelope matching, "
        "codec/envelope.py; from 3 kbps, above 450 Hz and the low band); streamed output 6.7 ms later",
        config=(("name", "rvq24k-v20"), *V20_SETTINGS.items()),
    ),
    "rvq24k-v19": RegisteredModel(
        *V19_FILE,
        "24 kHz mono, 1.5-24 kbps (interim): rvq24k-v18's codes (the log-mel codec and, at 12 and "
        "24 kbps, the low band's waveform below 862 Hz and 2.2 kHz) with a decoder that also reads "
        "the coded low band (decoder_lowband_bins 58): v17's decoder trained 3,000 more steps of "
        "configs/logmel24k-lowband.yaml on two CPU threads; pitch postfilter 0.75",
    ),
    "rvq24k-v18": RegisteredModel(
        *V17_FILE,
        "24 kHz mono, 1.5-24 kbps (interim): rvq24k-v17's weights (the log-mel codec, its spectral "
        "decoder, pitch postfilter 0.75), and at 12 and 24 kbps the low band's waveform: 6 and 8 "
        "log-mel levels, the other codes an MDCT of the audio below 862 Hz (12 kbps) or 2.2 kHz "
        "(24 kbps) that replaces the decoder's own there (codec/lowband.py); 1.5-6 kbps as v17",
        config=(("name", "rvq24k-v18"), ("lowband_levels", (0, 0, 0, 6, 8))),
    ),
    "rvq24k-v17": RegisteredModel(
        *V17_FILE,
        "24 kHz mono, 1.5-24 kbps (interim): the log-mel codec, each frame's 80-band log-mel "
        "spectrum coded by a 32-level RVQ whose codebooks were fitted by k-means (v14's, so v14's "
        "to v16's files decode with it); v14's spectral decoder trained 6,575 steps (v15), 5,912 "
        "more (v16), then 4,000 more, on two CPU threads with a phase loss on the group delay and "
        "the phase advance from frame to frame; pitch postfilter 0.75; output lined up with the "
        "input (4 ms of decoder delay dropped)",
    ),
    "rvq24k-v13": RegisteredModel(
        "rvq24k-v13.safetensors",
        "5083370554c59db5e23d2aee3aaf13f62c34ad7cbffa3f1b2b17d8ab0d9d62ad",
        "24 kHz mono, 1.5-24 kbps (interim): the log-mel codec, each frame's 80-band log-mel "
        "spectrum coded by a 32-level EMA RVQ and decoded by a spectral decoder; v12 carried on "
        "for 2,823 steps of batch 64 on a GPU and 4,080 of batch 16 on two CPU threads; pitch "
        "postfilter 0.75; output lined up with the input (4 ms of decoder delay dropped)",
    ),
    "rvq24k-v10": RegisteredModel(
        "rvq24k-v10.safetensors",
        "9fabc5c0ad06f6cd2771183d6282d38272dbdf02e466a181c45c53e9e1cdb011",
        "24 kHz mono, 1.5-24 kbps (interim): rvq24k-v8's encoder and codebooks (so its codes, and "
        "v7's to v9's files) with a spectral decoder (ConvNeXt blocks at the frame rate, one inverse "
        "FFT a frame): v9's, fine-tuned for 13,440 steps with an STFT phase loss; pitch postfilter 0.75",
    ),
}
# Earlier releases whose files later models still decode: the weights hash their .rvq headers
# carry -> the codes_fingerprint() of their encoder and codebooks. rvq24k-v7 and v8 (the same
# weights) and v9 -> v8's encoder and codebooks, which v9 and v10 kept (v11 to v17 code the
# log-mel spectrum instead: new codes, so those files decode with v10, which stays built in).
# v11 to v14's codebooks each moved on from the last one's (v14's were fitted afresh), so their
# files need their own weights: v13 stays built in for its files; v11's and v12's are in git
# history (docs/model_card.md). v15 to v17 kept v14's codebooks: v14's to v16's files decode
# with v17. v18 is v17's weights with the low band (codec/lowband.py): its 12 and 24 kbps
# codes mean something else (its fingerprints hash lowband_levels), so v14's to v17's files
# decode with v17, which stays built in. v19 reads v18's codes with another decoder (one whose
# first layer also reads the low band): v18 stays built in for its files (it shares v17's).
EARLIER_CODES = {
    "e9271f8063f42148": "4b8cbd2b84f5762b84d89b51e0e8084cdf043d4517e64268ceb0c239ac68708b",  # v7, v8
    "07f2c20aee4c4948": "4b8cbd2b84f5762b84d89b51e0e8084cdf043d4517e64268ceb0c239ac68708b",  # v9
    "c60942651884af94": "b61d7523a9c96b4b35170f1019bdb9a3628fec95580aac8b021f3f624f5efcd3",  # v14
    "ffc9ae14d9a6bed2": "b61d7523a9c96b4b35170f1019bdb9a3628fec95580aac8b021f3f624f5efcd3",  # v15
    "7f84d3d8f2c7d43a": "b61d7523a9c96b4b35170f1019bdb9a3628fec95580aac8b021f3f624f5efcd3",  # v16
}
# EMA statistics of the codebooks: needed to continue training, not to run the model.
TRAINING_ONLY = {f"quantizer.{name}" for name in ResidualVectorQuantizer.TRAINING_BUFFERS}
DEFAULT_MODEL = "rvq24k-v24"
ALIASES = {"rvq24k": DEFAULT_MODEL, "default": DEFAULT_MODEL}


class ModelError(CodecError):
    """A model name or file that cannot be loaded."""


def _weights_of(model: Codec, prefixes: tuple[str, ...] = ("",)) -> dict:
    return {k: v for k, v in sorted(model.state_dict(keep_vars=True).items()) if k.startswith(prefixes) and k not in TRAINING_ONLY}


def _digest(state: dict, signed_zeros: bool = False, lowband: tuple[tuple[int, ...], int, str] = ((), 0, "fixed")) -> bytes:
    """sha256 over names and float32 values, -0.0 counted as 0.0 (the same weights: rounding
    them again, as an export does, may flip the sign of a zero). ``signed_zeros``: as files
    written before session 15 hashed them (see :func:`reads`). ``lowband``: the config's
    ``lowband_levels``, ``output_delay`` (the low band's window overlap) and
    ``lowband_coding``, which change what codes mean (codec/lowband.py); without a low band
    nothing is added, and the fixed coding adds nothing to the levels, so hashes from before
    them stand."""
    h = hashlib.sha256()
    levels, overlap, coding = lowband
    if any(levels):
        suffix = "" if coding == "fixed" else f":{coding}"
        h.update(f"{LOWBAND_FORMAT}:{','.join(map(str, levels))}:{overlap}{suffix}".encode())
    for name, value in state.items():
        values = value.detach().float()
        if not signed_zeros:
            values = values + 0.0  # -0.0 + 0.0 is 0.0
        h.update(name.encode())
        h.update(values.contiguous().numpy().tobytes())
    return h.digest()


def _lowband(model: Codec) -> tuple[tuple[int, ...], int, str]:
    return model.cfg.lowband_levels, model.cfg.output_delay, model.cfg.lowband_coding


def fingerprint(model: Codec) -> bytes:
    """sha256 over the model's weights (names and float32 values), independent of file format
    and of the training-only EMA statistics.

    Cached on the model: hashing some 11M values for every file compressed would dominate short
    files. The cache is keyed on every tensor's in-place version counter, so weights changed
    since (a training step, ``load_state_dict``) are hashed again.
    """
    state = _weights_of(model)
    return model.fingerprint_cache.get(state.values(), lambda: _digest(state, lowband=_lowband(model)))


def codes_fingerprint(model: Codec) -> bytes:
    """sha256 over the encoder's and the quantizer's weights: what the codes mean. Models that
    share it read each other's codes, whatever their decoders. Cached on the model as
    :func:`fingerprint` is (decoding an earlier release's file asks for it more than once)."""
    state = _weights_of(model, ("encoder.", "quantizer."))
    return model.codes_fingerprint_cache.get(state.values(), lambda: _digest(state, lowband=_lowband(model)))


def reads(model: Codec, weights_hash: bytes) -> bool:
    """Whether ``model`` decodes a file whose header carries ``weights_hash`` (the first 8
    bytes of its maker's :func:`fingerprint`): the maker's own weights, or an earlier
    release's (:data:`EARLIER_CODES`) whose encoder and codebooks ``model`` has."""
    if fingerprint(model)[:8] == weights_hash:
        return True
    codes = EARLIER_CODES.get(weights_hash.hex())
    if codes is not None:
        return codes_fingerprint(model).hex() == codes
    # A file its own model wrote before the fingerprint counted -0.0 as 0.0 (session 15).
    return _digest(_weights_of(model), signed_zeros=True, lowband=_lowband(model))[:8] == weights_hash


def builtin_for(model_id: str, weights_hash: bytes) -> Codec | None:
    """The built-in model (loaded) that decodes a file made by ``model_id`` with
    ``weights_hash``: that one, else one that :func:`reads` the earlier release's codes; None
    if none."""
    if model_id in REGISTRY:
        return load(model_id)
    if weights_hash.hex() not in EARLIER_CODES:
        return None
    candidates = (load(name) for name in dict.fromkeys([DEFAULT_MODEL, *REGISTRY]))
    return next((model for model in candidates if reads(model, weights_hash)), None)


def save_model(model: Codec, path: Path, extra: dict[str, str] | None = None) -> None:
    """Write fp16 weights + config (safetensors metadata) to ``path`` atomically."""
    path = Path(path)
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
        if k not in TRAINING_ONLY
    }
    meta = {"format": FORMAT, "config": model.cfg.to_json(), **(extra or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    tmp.replace(path)


def load(name_or_path: str | Path | None = None) -> Codec:
    """A ready-to-use model in eval mode: a registered name (default ``rvq24k``) or a file path."""
    key, path = locate(name_or_path)
    if key in REGISTRY:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if REGISTRY[key].sha256 != digest:
            raise ModelError(f"built-in model {key!r} failed its sha256 check ({path})")
    return _load_file(path, dict(REGISTRY[key].config) if key in REGISTRY else {})


def locate(name_or_path: str | Path | None = None) -> tuple[str, Path]:
    """A model's registry key (the name, an alias resolved, or the path as given) and its
    weights file, without reading it: :class:`ModelError` for a name that is neither built in
    nor a file (so that training can refuse a mistyped ``--init`` before decoding a corpus)."""
    key = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    key = ALIASES.get(key, key)
    if key in REGISTRY:
        path = WEIGHTS_DIR / REGISTRY[key].file
        if not path.exists():
            raise ModelError(f"built-in model {key!r} is missing its weights file {path}")
        return key, path
    path = Path(key)
    if not path.exists():
        names = ", ".join([*(f"{a} (= {n})" for a, n in ALIASES.items()), *sorted(REGISTRY)])
        raise ModelError(f"unknown model {key!r}: not a file, and not one of the built-in models ({names})")
    if path.is_dir():
        raise ModelError(f"model {key!r} is a folder, not a .safetensors file (for a training run's folder, "
                         "`rvqcodec export` writes one)")
    return key, path


def registered(name: str) -> RegisteredModel | None:
    """The registry entry of a built-in model's name or alias; None for any other name."""
    return REGISTRY.get(ALIASES.get(name, name))


def registered_config(name: str) -> CodecConfig | None:
    """A built-in model's config (a registered name or alias), from its file's metadata alone
    (no weights read, no sha256 check); None for any other name."""
    entry = registered(name)
    if entry is None:
        return None
    return _read_file(WEIGHTS_DIR / entry.file, dict(entry.config), tensors=False)[0]


def _read_file(path: Path, overrides: dict, tensors: bool = True) -> tuple[CodecConfig, dict]:
    """The config in ``path``'s metadata (with ``overrides``) and, with ``tensors``, its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as exc:
        raise ModelError(f"cannot read model weights from {path}: {str(exc).splitlines()[0]}") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ModelError(f"{path} is not an rvqcodec model file")
    try:
        return CodecConfig.from_dict({**json.loads(meta["config"]), **overrides}), state
    except (ValueError, TypeError) as exc:  # e.g. written by another version of rvqcodec
        raise ModelError(f"{path} holds a model config this version cannot use: {str(exc).splitlines()[0]}") from None


def _load_file(path: Path, overrides: dict | None = None) -> Codec:
    cfg, tensors = _read_file(path, overrides or {})
    model = Codec(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - TRAINING_ONLY:
            raise RuntimeError(f"missing keys {sorted(set(missing) - TRAINING_ONLY)}, unexpected keys {sorted(unexpected)}")
    except RuntimeError as exc:
        raise ModelError(f"{path} does not match its own config: {str(exc).splitlines()[0]}") from None
    model.quantizer.reset_statistics()
    return model.eval()
