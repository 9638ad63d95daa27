"""Embedding matching: the student's (adapted) embedding regresses the teacher's.

The feature-regression form of knowledge distillation: A. Romero et al., "FitNets: Hints for
Thin Deep Nets", ICLR 2015, arXiv:1412.6550 (MSE through a learned regressor); the cosine form
as used for self-supervised students in e.g. "SimReg" (K. L. Navaneet et al., BMVC 2021,
arXiv:2201.05131). With `s = adapter(student embedding)` and `t` the teacher's embedding:

    cosine: L = mean_batch( 1 - s . t / (||s|| ||t||) )
    mse:    L = mean_{batch, dim}( (s - t)^2 )

The adapter (`condense.distill.adapters.make_projector`) belongs to the task and is trained with
the student; the teacher side is detached.
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError

KINDS = ("cosine", "mse")


def embedding_loss(student: Tensor, teacher: Tensor, kind: Literal["cosine", "mse"] = "cosine") -> Tensor:
    """`1 - cos` (mean over the batch) or MSE (mean over every element) of `(B, D)` embeddings."""
    if student.shape != teacher.shape:
        raise ConfigError(f"embed: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape; use an adapter")
    s, t = student.float().flatten(1), teacher.detach().float().flatten(1)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=1)).mean()
    if kind == "mse":
        return F.mse_loss(s, t)
    raise ConfigError(f"embed: kind must be one of {KINDS}, got {kind!r}")


class EmbeddingLoss(nn.Module):
    """`embedding_loss` of a fixed kind."""

    def __init__(self, kind: Literal["cosine", "mse"] = "cosine") -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"EmbeddingLoss: kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return embedding_loss(student, teacher, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
