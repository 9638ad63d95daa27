"""Atomic training checkpoints for exact resume.

A checkpoint holds tensors and plain data only (loaded with `torch.load(weights_only=True)`, so
loading one never runs code): the trained modules' state, optimizer and scheduler state, the
torch RNG states, callback states, the history and the best-so-far weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from condense.core.errors import ConfigError, InputFileError
from condense.core.io import atomic_path
from condense.train.callbacks import Callback
from condense.train.config import TrainConfig
from condense.train.task import Task, trained_modules

CHECKPOINT_NAME = "last.ckpt"
# Fields that may differ between the interrupted run and the resumed one without changing results.
# (epochs / max_steps are not among them: they set the length of the learning-rate schedule.)
_RESUME_FREE = {"checkpoint_dir", "log_file", "progress", "threads", "device", "num_workers", "pin_memory"}
_FIELD_DEFAULTS = {k: v for k, v in TrainConfig().to_dict().items() if k not in _RESUME_FREE}


def save_checkpoint(
    path: Path,
    task: Task,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    callbacks: Sequence[Callback],
    config: TrainConfig,
    **fields: Any,
) -> None:
    payload = {
        "format": "condense-checkpoint/1",
        "modules": {k: m.state_dict() for k, m in trained_modules(task).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "callbacks": [cb.state_dict() for cb in callbacks],
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": config.to_dict(),
        **fields,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: Path,
    task: Task,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    callbacks: Sequence[Callback],
    config: TrainConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; return the loop's bookkeeping fields."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error means a bad file
        raise InputFileError(f"{path}: not a readable condense checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != "condense-checkpoint/1":
        raise InputFileError(f"{path}: not a condense checkpoint (format {ck.get('format') if isinstance(ck, dict) else None!r})")
    # a field the checkpoint does not name was added to TrainConfig after it was written: it ran
    # with that field's default (e.g. `auto_epochs`, 10), so only a non-default value is a change
    old = {**_FIELD_DEFAULTS, **{k: v for k, v in ck["config"].items() if k not in _RESUME_FREE}}
    new = {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE}
    changed = sorted(k for k in new if old.get(k) != new[k])
    if changed:
        raise ConfigError(
            f"{path}: cannot resume with a different training config; changed: "
            + ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed)
        )
    modules = trained_modules(task)
    if set(ck["modules"]) != set(modules):
        raise InputFileError(f"{path}: checkpoint holds modules {sorted(ck['modules'])}, the task has {sorted(modules)}")
    for name, module in modules.items():
        try:
            module.load_state_dict(ck["modules"][name], strict=True)
        except RuntimeError as e:
            raise InputFileError(f"{path}: checkpoint does not fit module {name!r}: {str(e).splitlines()[0]}") from None
        module.to(device)
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if len(ck["callbacks"]) != len(callbacks):
        raise ConfigError(f"{path}: checkpoint has {len(ck['callbacks'])} callback states, the run has {len(callbacks)} callbacks")
    for cb, st in zip(callbacks, ck["callbacks"], strict=False):
        cb.load_state_dict(st)
    torch.set_rng_state(ck["rng_cpu"])
    if ck["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["rng_cuda"])
    return ck
