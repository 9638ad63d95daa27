"""Data-parallel training under `torchrun`: the world comes from its environment, never from us.

`torchrun --nproc_per_node=N ...` sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`fit()` then initialises the process group (gloo on CPU, nccl on CUDA), wraps the task's trained
modules (student + adapters, never a teacher) in DistributedDataParallel, and gives each rank its
shard of every global batch. Without WORLD_SIZE > 1 nothing here is entered: one process is the
plain run. Only rank 0 writes checkpoints, artifacts, logs and reports (`is_main()`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from condense.core.errors import CondenseError, ConfigError, RunError

T = TypeVar("T")

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


def ensure_initialized(device_type: str | None = None) -> World:
    """Initialise the default process group when torchrun started several processes (idempotent).

    Backend: gloo for CPU tensors, and nccl for CUDA tensors when this machine has CUDA (one
    process group serves both: `cpu:gloo,cuda:nccl`), so a stage on the CPU and one on the GPU
    can follow each other in one run. `device_type` is accepted for callers that know it.
    """
    w = world()
    if not w.distributed or initialized():
        return w
    if not torch.distributed.is_available():
        raise RunError("torch.distributed is not available in this PyTorch build; run one process")
    cuda = torch.cuda.is_available() and device_type != "cpu"
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda:
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


def _ready() -> bool:
    """True when collectives apply: several torchrun processes (the group is joined on first use)."""
    if not world().distributed:
        return False
    ensure_initialized()
    return True


def barrier() -> None:
    if _ready():
        run_collective(torch.distributed.barrier)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (the object itself in a plain run)."""
    if not _ready():
        return obj
    box = [obj]
    run_collective(torch.distributed.broadcast_object_list, box, src=src)
    return box[0]


def any_flags(*flags: bool, device: torch.device | None = None) -> tuple[bool, ...]:
    """Element-wise OR of boolean flags over all ranks (each rank's own flags in a plain run)."""
    if not _ready():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device or "cpu")
    run_collective(torch.distributed.all_reduce, t, op=torch.distributed.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only (files are written by one process) and return its result on every
    rank; the others wait. When `fn` fails on rank 0, every rank raises: rank 0 its own error,
    the others a `MainFailed` with the same message and exit code, so no process waits forever
    for a peer that gave up. In a plain run this is `fn()`."""
    if not _ready():
        return fn()
    result: Any = None
    failure: tuple[str, int] | None = None
    error: BaseException | None = None
    if world().main:
        try:
            result = fn()
        except BaseException as e:  # re-raised below, after the others know
            error = e
            code = getattr(e, "exit_code", 4)
            failure = (f"{type(e).__name__}: {e}", int(code) if isinstance(code, int) else 4)
    result, failure = broadcast_object((result if failure is None else None, failure))
    if error is not None:
        raise error
    if failure is not None:
        raise MainFailed(*failure)
    return result


class MainFailed(CondenseError):
    """Rank 0 failed in a step only it runs (writing files, measuring); the other ranks stop too."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(f"rank {world().rank}: rank 0 failed ({message}); stopping too")
        self.exit_code = exit_code


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into `module` on every rank."""
    if not initialized():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            run_collective(torch.distributed.broadcast, t.data, src=src)


def run_collective(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a collective; a dead or failed peer becomes one clear RunError (exit 4)."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, torch.distributed.DistError) as e:
        raise PeerError(e) from e


_PEER_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out")


def is_peer_failure(e: BaseException) -> bool:
    """Whether an error raised inside a collective (DDP's gradient all-reduce, a barrier) means that
    another process failed or vanished, rather than a bug in this one."""
    if isinstance(e, torch.distributed.DistError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(m in text for m in _PEER_MARKERS)


class PeerError(RunError):
    """Another torchrun process failed or vanished; this one stops without writing anything."""

    def __init__(self, cause: BaseException) -> None:
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        super().__init__(f"rank {world().rank}: another torchrun process stopped or failed ({first}); "
                         "stopping too, nothing written by this process")


def destroy(graceful: bool = True) -> None:
    """Leave the process group (CLI exit).

    On a normal exit every rank first meets at a barrier. Without it, rank 0 could reach
    interpreter shutdown while a gloo worker thread is still releasing the last broadcast's
    tensors: that thread then needs the GIL during finalisation and the process aborts with
    "terminate called without an active exception" (seen about 1 run in 12 of a 2-rank recipe;
    the same teardown race as pytorch/pytorch PR 179291). The barrier's wait releases the GIL, so
    the worker finishes first. After a failure (`graceful=False`) a peer may be gone, so no barrier.
    """
    if not initialized():
        return
    if graceful:
        with contextlib.suppress(PeerError):  # a peer left already; nothing to wait for
            run_collective(torch.distributed.barrier)
    torch.distributed.destroy_process_group()
    gc.collect()  # drop the last Python references to collective tensors while the interpreter is whole


__all__ = [
    "MainFailed",
    "PeerError",
    "World",
    "any_flags",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "destroy",
    "ensure_initialized",
    "is_main",
    "is_peer_failure",
    "on_main",
    "per_rank_batch",
    "world",
]
