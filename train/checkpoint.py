"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``step_{N:08d}/`` holding ``tensors.safetensors`` (model,
discriminators, optimiser moments, RNG states) and ``state.json`` (config, step, optimiser
hyper-parameters, discriminator steps). Folders are written under a temporary name, then renamed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    plain = {}
    for idx, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{idx}.{name}"] = value.contiguous()
            else:
                plain[f"{idx}.{name}"] = value
    meta[prefix] = {"param_groups": sd["param_groups"], "plain": plain}


def _unflatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}.state."
    for key, value in tensors.items():
        if key.startswith(head):
            idx, name = key[len(head) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta[prefix]["plain"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    # The settings are this run's: betas and weight decay from its config (a later phase may
    # change them), fused or foreach as this machine chose. They go in before loading, since
    # torch places the step counts by the groups it loads (on the GPU for a fused update).
    groups = [{**saved, **{k: v for k, v in now.items() if k not in ("params", "param_names")}}
              for saved, now in zip(meta[prefix]["param_groups"], opt.param_groups, strict=True)]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict[str, Any],
    keep: int = 3,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``run_dir/step_N`` atomically and delete all but the newest ``keep``.

    ``extra`` is stored as JSON, ``tensors`` (RNG states, say) next to the weights.
    """
    run_dir = Path(run_dir)
    flat: dict[str, torch.Tensor] = {k: v.detach().cpu().contiguous() for k, v in (tensors or {}).items()}
    meta: dict[str, Any] = {"step": step, **extra}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            flat[f"{name}.{key}"] = value.detach().cpu().contiguous().clone()
    for name, opt in optimizers.items():
        _flatten_optimizer(f"optim_{name}", opt, flat, meta)
    final = run_dir / f"step_{step:08d}"
    tmp = run_dir / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(flat, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=_json_default))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob("step_*") if (p / "state.json").exists())


def load_checkpoint(
    path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore modules and optimisers in place.

    Returns the JSON state (step, config, ...) and every tensor, for the caller to take
    what else it saved (RNG states). A module or optimiser the checkpoint lacks (the
    discriminators of a run that had none yet) is left as it is and listed in
    ``state["missing"]``.
    """
    path = Path(path)
    tensors = load_file(str(path / "tensors.safetensors"))
    meta = json.loads((path / "state.json").read_text())
    missing = []
    for name, module in modules.items():
        head = f"{name}."
        own = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
        if own:
            module.load_state_dict(own)
        else:
            missing.append(name)
    for name, opt in optimizers.items():
        if f"optim_{name}" in meta:
            _unflatten_optimizer(f"optim_{name}", opt, tensors, meta)
        else:
            missing.append(f"optim_{name}")
    meta["missing"] = missing
    return meta, tensors


def read_model_state(path: Path, name: str = "generator") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights of one module and the JSON state, for exporting a release model."""
    tensors = load_file(str(Path(path) / "tensors.safetensors"))
    meta = json.loads((Path(path) / "state.json").read_text())
    head = f"{name}."
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}, meta


def _json_default(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")
