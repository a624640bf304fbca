"""Multi-process training through PyTorch's own launcher (``torchrun``).

``torchrun --nproc_per_node N -m train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and the rendezvous address in the environment; :func:`setup` reads them. Without them the
run is a single process and every helper here is a no-op. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from codec.errors import CodecError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Context:
    """Join the process group described by the environment (if any) and pick the device.

    ``device``: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise CodecError("--device cuda, but PyTorch sees no GPU")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # Rank 0 alone validates and writes checkpoints while the others wait in the next
        # collective: allow that much time before calling a process lost.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return Context(rank, world, local, dev)


def teardown(finished: bool = False) -> None:
    """Leave the process group. ``finished``: every process got here normally, so wait for
    all of them first; a process that tears down while another is still inside gloo (rank 0
    writing the last checkpoint) can abort the whole run at exit."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # DDP's reducer holds the group's work objects: free them while the group lives
    if finished:  # (a process that failed instead ends the run: torchrun stops the others)
        dist.barrier()
    dist.destroy_process_group()


def any_true(flag: bool, ctx: Context) -> bool:
    """Whether ``flag`` is set on any process (all must stop at the same step)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def mean(values: dict[str, Tensor], ctx: Context) -> dict[str, Tensor]:
    """Average scalar tensors over processes (for logging what all of them saw)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().to(ctx.device) for k in keys])
    dist.all_reduce(stacked)
    stacked /= ctx.world_size
    return dict(zip(keys, stacked.unbind()))


def gather_rng(ctx: Context) -> dict[str, Tensor]:
    """Every process's torch RNG states, keyed ``rng.torch.{rank}`` / ``rng.cuda.{rank}``."""
    own = {"torch": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(ctx.device)
    if not ctx.distributed:
        return {f"rng.{k}.0": v for k, v in own.items()}
    out = {}
    for kind, state in own.items():
        local = state.to(ctx.device)
        parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
        dist.all_gather(parts, local)
        out.update({f"rng.{kind}.{r}": p.cpu() for r, p in enumerate(parts)})
    return out


def restore_rng(tensors: dict[str, Tensor], ctx: Context) -> bool:
    """Restore this process's RNG states if the checkpoint holds them (same world size)."""
    state = tensors.get(f"rng.torch.{ctx.rank}")
    if state is None and ctx.rank == 0:
        state = tensors.get("rng.torch")  # checkpoints written before per-process states
    if state is None:
        return False
    torch.set_rng_state(state.to(torch.uint8))
    cuda = tensors.get(f"rng.cuda.{ctx.rank}")
    if cuda is not None and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(cuda.to(torch.uint8), ctx.device)
    return True
