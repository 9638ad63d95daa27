"""Supervised classification: cross-entropy on labels (optionally label-smoothed, augmented)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError
from condense.export.onnx import output_tensor
from condense.models.signature import call_model
from condense.train.task import TaskBase


def require_targets(batch: dict[str, torch.Tensor], what: str) -> torch.Tensor:
    """Return batch["target"], or a clear error when the data is unlabelled."""
    if "target" not in batch:
        raise ConfigError(f"{what} needs labelled data, but the batches have no 'target'")
    return batch["target"]


class SupervisedTask(TaskBase):
    """Train `model` on labelled batches with cross-entropy.

    The model is called with each batch as its input signature says (`call_model`), so an image
    CNN (`input`) and a Hugging Face classifier (`input_ids`, `attention_mask`) train the same way.

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
        if self.augment is not None:
            if "input" not in batch:
                raise ConfigError(f"augmentation transforms the 'input' field, but the batches have {sorted(batch)}")
            batch = {**batch, "input": self.augment(batch["input"])}
        logits = output_tensor(call_model(self.model, batch))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        acc = (logits.detach().argmax(dim=1) == y).float().mean()
        return {"loss": loss, "accuracy": acc}
