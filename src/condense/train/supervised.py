"""Supervised classification: cross-entropy on labels (optionally label-smoothed, augmented)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError
from condense.train.task import TaskBase


def require_targets(batch: dict[str, torch.Tensor], what: str) -> torch.Tensor:
    """Return batch["target"], or a clear error when the data is unlabelled."""
    if "target" not in batch:
        raise ConfigError(f"{what} needs labelled data, but the batches have no 'target'")
    return batch["target"]


class SupervisedTask(TaskBase):
    """Train `model` on labelled batches with cross-entropy.

    `augment` (e.g. from `condense.data.build_augment`) is applied to the input batch in
    training steps only.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        label_smoothing: float = 0.0,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(model)
        self.label_smoothing = label_smoothing
        self.augment = augment

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        y = require_targets(batch, "supervised training")
        x = batch["input"]
        if self.augment is not None:
            x = self.augment(x)
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        acc = (logits.detach().argmax(dim=1) == y).float().mean()
        return {"loss": loss, "accuracy": acc}
