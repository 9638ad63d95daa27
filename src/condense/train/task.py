"""The Task protocol: what the one training loop `fit()` trains.

A task turns a batch into a loss. It owns its models (student, frozen teachers, adapters), says
which parameters the optimizer may touch, and which module is evaluated and saved. Distillation,
self-supervised pretraining and QAT are tasks; the loop never changes for them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Task(Protocol):
    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Forward one training batch; return {"loss": scalar tensor, **floats_to_log}."""
        ...

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimizer updates (student + adapters; never a frozen teacher)."""
        ...

    def eval_model(self) -> nn.Module:
        """The module evaluated on validation data, checkpointed as "best" and returned."""
        ...

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state must be checkpointed or moved to the device, by name."""
        ...

    def train(self, mode: bool = True) -> None:
        """Set train / eval mode (frozen teachers stay in eval mode)."""
        ...


class TaskBase:
    """Convenience base: a task with one trainable `model` plus optional extra modules.

    Subclasses implement `step`. `extra_modules` are trained too (adapters, heads);
    `frozen_modules` (teachers) are moved to the device, kept in eval mode and excluded from the
    optimizer and from gradients.
    """

    def __init__(
        self,
        model: nn.Module,
        extra_modules: dict[str, nn.Module] | None = None,
        frozen_modules: dict[str, nn.Module] | None = None,
    ) -> None:
        self.model = model
        self.extra_modules = nn.ModuleDict(extra_modules or {})
        self.frozen_modules = dict(frozen_modules or {})
        for m in self.frozen_modules.values():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for p in self.extra_modules.parameters() if p.requires_grad]
        return params

    def eval_model(self) -> nn.Module:
        return self.model

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "extra": self.extra_modules, **self.frozen_modules}

    def trained_modules(self) -> dict[str, nn.Module]:
        """Modules whose weights change in training (checkpointed); frozen ones are not."""
        return {"model": self.model, "extra": self.extra_modules}

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        self.extra_modules.train(mode)
        for m in self.frozen_modules.values():
            m.eval()



def trained_modules(task: Task) -> dict[str, nn.Module]:
    """The task's modules whose weights training changes (checkpointed); all modules if it doesn't say."""
    fn = getattr(task, "trained_modules", None)
    return fn() if callable(fn) else task.modules()


@contextlib.contextmanager
def frozen_while_teaching(teachers: Sequence[nn.Module]) -> Iterator[None]:
    """Teachers are frozen (eval mode, no grad) only while they teach: on exit each gets back the
    train/eval mode and `requires_grad` flags it came with."""
    saved = [(t.training, [p.requires_grad for p in t.parameters()]) for t in teachers]
    try:
        yield
    finally:
        for t, (mode, flags) in zip(teachers, saved, strict=True):
            t.train(mode)
            for p, flag in zip(t.parameters(), flags, strict=True):
                p.requires_grad_(flag)
