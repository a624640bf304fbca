"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``step_{N:08d}/`` holding ``tensors.safetensors`` (model,
discriminators, optimiser moments, RNG state) and ``state.json`` (config, step, optimiser
hyper-parameters, sampler RNG). Folders are written under a temporary name, then renamed.
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
    opt.load_state_dict({"state": state, "param_groups": meta[prefix]["param_groups"]})


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write ``run_dir/step_N`` atomically and delete all but the newest ``keep``."""
    run_dir = Path(run_dir)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"step": step, **extra}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().clone()
    for name, opt in optimizers.items():
        _flatten_optimizer(f"optim_{name}", opt, tensors, meta)
    tensors["rng.torch"] = torch.get_rng_state()
    final = run_dir / f"step_{step:08d}"
    tmp = run_dir / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "tensors.safetensors"))
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
) -> dict[str, Any]:
    """Restore modules and optimisers in place; returns the JSON state (step, config, ...)."""
    path = Path(path)
    tensors = load_file(str(path / "tensors.safetensors"))
    meta = json.loads((path / "state.json").read_text())
    for name, module in modules.items():
        head = f"{name}."
        module.load_state_dict({k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)})
    for name, opt in optimizers.items():
        _unflatten_optimizer(f"optim_{name}", opt, tensors, meta)
    torch.set_rng_state(tensors["rng.torch"])
    return meta


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
