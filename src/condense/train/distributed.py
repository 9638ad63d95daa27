"""Data-parallel training under `torchrun`: the world comes from its environment, never from us.

`torchrun --nproc_per_node=N ...` sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`fit()` then initialises the process group (gloo on CPU, nccl on CUDA), wraps the task's trained
modules (student + adapters, never a teacher) in DistributedDataParallel, and gives each rank its
shard of every global batch. Without WORLD_SIZE > 1 nothing here is entered: one process is the
plain run. Only rank 0 writes checkpoints, artifacts, logs and reports (`is_main()`).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, RunError

# How long ranks wait for each other (a barrier while rank 0 measures a stage, a collective while a
# peer is slow) before giving up; CONDENSE_DIST_TIMEOUT_S overrides it.
DEFAULT_TIMEOUT_S = 3600


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def world() -> World:
    """This process's place in the torchrun world (size 1 outside torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={size}")
    return World(rank, size, _env_int("LOCAL_RANK", 0))


def is_main() -> bool:
    """True in a plain run and on rank 0 under torchrun: the process that writes files."""
    return world().main


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def ensure_initialized(device_type: str = "cpu") -> World:
    """Initialise the default process group when torchrun started several processes (idempotent)."""
    w = world()
    if not w.distributed or initialized():
        return w
    if not torch.distributed.is_available():
        raise RunError("torch.distributed is not available in this PyTorch build; run one process")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(w.local_rank)
    timeout = _dt.timedelta(seconds=_env_int("CONDENSE_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    try:
        torch.distributed.init_process_group(backend=backend, timeout=timeout)
    except (RuntimeError, ValueError) as e:
        raise RunError(f"rank {w.rank}: cannot join the torchrun process group ({backend}): {e}") from e
    return w


def device_for(device: torch.device, w: World) -> torch.device:
    """One GPU per process under torchrun (cuda:LOCAL_RANK); CPU stays CPU."""
    if w.distributed and device.type == "cuda":
        return torch.device("cuda", w.local_rank)
    return device


def per_rank_batch(batch_size: int, w: World) -> int:
    """The per-process batch: TrainConfig.batch_size is the global batch and must divide evenly."""
    if batch_size % w.size:
        raise ConfigError(
            f"TrainConfig.batch_size={batch_size} is the global batch and must be divisible by the number of "
            f"processes ({w.size}, from torchrun --nproc_per_node); use e.g. {batch_size - batch_size % w.size or w.size}"
        )
    return batch_size // w.size


def barrier() -> None:
    if initialized():
        _collective(torch.distributed.barrier)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (the object itself in a plain run)."""
    if not initialized():
        return obj
    box = [obj]
    _collective(torch.distributed.broadcast_object_list, box, src=src)
    return box[0]


def any_flags(*flags: bool, device: torch.device | None = None) -> tuple[bool, ...]:
    """Element-wise OR of boolean flags over all ranks (each rank's own flags in a plain run)."""
    if not initialized():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device or "cpu")
    _collective(torch.distributed.all_reduce, t, op=torch.distributed.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into `module` on every rank."""
    if not initialized():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            _collective(torch.distributed.broadcast, t.data, src=src)


def _collective(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a collective; a dead or failed peer becomes one clear RunError (exit 4)."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, torch.distributed.DistError) as e:
        raise PeerError(e) from e


class PeerError(RunError):
    """Another torchrun process failed or vanished; this one stops without writing anything."""

    def __init__(self, cause: BaseException) -> None:
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        super().__init__(f"rank {world().rank}: another torchrun process stopped or failed ({first}); "
                         "stopping too, nothing written by this process")


def ddp_wrap(module: nn.Module, device: torch.device, w: World) -> nn.Module:
    """DistributedDataParallel around `module` (the trained modules of a task)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    try:
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)
    except RuntimeError as e:
        raise PeerError(e) from e


def destroy() -> None:
    """Leave the process group (CLI exit)."""
    if initialized():
        torch.distributed.destroy_process_group()


__all__ = [
    "PeerError",
    "World",
    "any_flags",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "ddp_wrap",
    "destroy",
    "ensure_initialized",
    "is_main",
    "per_rank_batch",
    "world",
]
