"""Export a training run's newest checkpoint as a release model (fp16 weights + config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codec.config import CodecConfig
from codec.errors import CodecError
from codec.model import Codec
from codec.native import round_narrow_weights
from codec.weights import save_model

from .checkpoint import list_checkpoints, read_model_state


def export_run(run_dir: Path, output: Path, name: str | None = None, use_ema: bool = True, int8: bool = True) -> Path:
    """Write the generator (its EMA copy when the run kept one) of the newest checkpoint.

    ``run_dir`` may also be one checkpoint folder (``step_N``). No optimiser state is kept.
    ``int8``: round the deepest layers' weights to int8 rows for the live-frame runtime
    (:func:`codec.native.round_narrow_weights`).
    """
    model, step = run_model(run_dir, name, use_ema, int8)
    save_model(model, Path(output), extra={"step": str(step)})
    return Path(output)


def run_model(run_dir: Path, name: str | None = None, use_ema: bool = True, int8: bool = True) -> tuple[Codec, int]:
    """The model :func:`export_run` would write (before its float16 rounding), and the step
    of its checkpoint."""
    run_dir = Path(run_dir)
    ckpts = [run_dir] if (run_dir / "state.json").exists() else list_checkpoints(run_dir)
    if not ckpts:
        raise CodecError(f"no checkpoint found in {run_dir}")
    state, meta = read_model_state(ckpts[-1], "generator")
    if use_ema:
        ema, _ = read_model_state(ckpts[-1], "ema")
        state = ema or state
    cfg = CodecConfig.from_dict(meta["config"]["model"])
    if name:
        cfg = dataclasses.replace(cfg, name=name)
    model = Codec(cfg)
    model.load_state_dict(state)
    if int8:
        round_narrow_weights(model)
    return model.eval(), int(meta["step"])
