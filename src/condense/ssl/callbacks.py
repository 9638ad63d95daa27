"""The EMA target of bootstrap methods (BYOL), as a callback of the one training loop.

After every optimizer step, each target module moves towards its online twin:

    target <- m * target + (1 - m) * online        (parameters and floating-point buffers)

integer buffers (BatchNorm's `num_batches_tracked`) are copied. With `schedule="cosine"` the
momentum rises from `momentum` to 1 over training as in BYOL (Grill et al. 2020, sec. 3.2):
`m_k = 1 - (1 - m_0) * (cos(pi k / K) + 1) / 2` for the k-th update (k = 0 first) of K.
The targets are frozen modules of the task (never in the optimizer, never checkpointed as
trained modules), so this callback carries their weights in `state_dict` for exact resume.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.train.callbacks import Callback, FitState


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """`target <- momentum * target + (1 - momentum) * online`, in place (module shapes must match)."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ConfigError("ema: target and online modules have different parameter lists")
    for t, o in zip(t_params, o_params, strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        if t.is_floating_point():
            t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
        else:
            t.copy_(o)


def ema_momentum(base: float, step: int, total_steps: int, schedule: str) -> float:
    """The momentum for update number `step` (0-based) of `total_steps`."""
    if schedule == "constant" or total_steps <= 1:
        return base
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class EMATarget(Callback):
    """Update `pairs` of `(online, target)` modules by EMA at each step end."""

    def __init__(
        self,
        pairs: Sequence[tuple[nn.Module, nn.Module]],
        momentum: float = 0.99,
        schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"EMATarget: momentum must be in [0, 1], got {momentum}")
        if schedule not in ("cosine", "constant"):
            raise ConfigError(f"EMATarget: schedule must be 'cosine' or 'constant', got {schedule!r}")
        self.pairs = list(pairs)
        self.momentum = float(momentum)
        self.schedule = schedule
        self.updates = 0
        self.last_momentum: float | None = None

    def on_step_end(self, state: FitState) -> None:
        m = ema_momentum(self.momentum, state.step - 1, state.total_steps, self.schedule)
        for online, target in self.pairs:
            ema_update(target, online, m)
        self.updates += 1
        self.last_momentum = m

    def state_dict(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "targets": [{k: v.detach().cpu().clone() for k, v in t.state_dict().items()} for _, t in self.pairs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        targets = state.get("targets", [])
        if len(targets) != len(self.pairs):
            raise ConfigError(f"EMATarget: checkpoint holds {len(targets)} targets, this run has {len(self.pairs)}")
        for (_, t), sd in zip(self.pairs, targets, strict=True):
            t.load_state_dict(sd)
        self.updates = int(state.get("updates", 0))
