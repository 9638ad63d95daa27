"""Callbacks: schedules and side effects hooked into the one training loop.

Sparsity ramps, observer freezing, EMA targets and BatchNorm-L1 penalties are callbacks, never
branches in `fit()`. A callback that carries state across epochs implements `state_dict` /
`load_state_dict` so that resume continues it exactly.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from condense.train.config import TrainConfig
    from condense.train.task import Task


@dataclasses.dataclass
class FitState:
    """What the loop exposes to callbacks. `step` counts optimizer steps taken so far."""

    task: Task
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    device: torch.device
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    last_output: dict[str, Any] = dataclasses.field(default_factory=dict)
    epoch_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    stop: bool = False  # a callback may set this to end training after the current step


class Callback:
    """Base class; override the hooks you need. All hooks receive the live FitState."""

    def on_fit_begin(self, state: FitState) -> None: ...
    def on_epoch_begin(self, state: FitState) -> None: ...
    def on_step_begin(self, state: FitState) -> None: ...
    def on_after_backward(self, state: FitState) -> None:
        """After loss.backward(), before clipping and optimizer.step() (e.g. add L1 subgradients)."""
    def on_step_end(self, state: FitState) -> None: ...
    def on_epoch_end(self, state: FitState) -> None: ...
    def on_fit_end(self, state: FitState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
