"""FitNets hint loss (Romero et al. 2015).

A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio, "FitNets: Hints for Thin
Deep Nets", ICLR 2015, arXiv:1412.6550.

    L = mean( (r(f_s) - f_t)^2 )

`r` is a learned regressor (here `condense.distill.adapters.make_projector`: 1x1 conv + BN for
conv maps, Linear for vectors/tokens). The paper uses the squared L2 norm / 2 per sample; we use
the element mean (same minimiser, scale-free across layer sizes; tune `weight` accordingly).

The regressor is created *lazily* from the first observed shapes: call `materialize(inputs)` (or
run one forward) before building the optimizer, or its parameters are not trained, and before
loading a checkpoint that contains them.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError, did_you_mean
from condense.distill.adapters import make_projector
from condense.distill.losses.base import FeatureLoss, LossInputs

_ADAPTER_MODES = ("auto", "always", "none")


def fitnet_loss(student_feature: Tensor, teacher_feature: Tensor, projector: nn.Module | None = None) -> Tensor:
    """MSE between `projector(student_feature)` (identity when None) and `teacher_feature`."""
    s = projector(student_feature) if projector is not None else student_feature
    if s.shape != teacher_feature.shape:
        raise ConfigError(
            f"fitnet: projected student feature {tuple(s.shape)} does not match teacher feature "
            f"{tuple(teacher_feature.shape)}; use a projector (adapter='auto')"
        )
    return F.mse_loss(s.float(), teacher_feature.float())


class FitNetLoss(FeatureLoss):
    """Hint loss between two named features, with a lazily-built projector.

    `adapter`: "auto" builds a projector only when the shapes differ, "always" builds one even
    when they match (the paper's regressor), "none" never (shapes must match).
    """

    def __init__(
        self, student_layer: str, teacher_layer: str, adapter: Literal["auto", "always", "none"] = "auto"
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        if adapter not in _ADAPTER_MODES:
            raise ConfigError(
                f"fitnet.adapter must be one of {', '.join(_ADAPTER_MODES)}, got {adapter!r}"
                f"{did_you_mean(str(adapter), _ADAPTER_MODES)}"
            )
        self.adapter = adapter
        self.projector: nn.Module | None = None
        self._materialized = False

    def build(self, student_shape: torch.Size, teacher_shape: torch.Size, *, like: Tensor | None = None) -> None:
        """Create the projector for these shapes (idempotent)."""
        if self._materialized:
            return
        same = tuple(student_shape[1:]) == tuple(teacher_shape[1:])
        if self.adapter == "always" or (self.adapter == "auto" and not same):
            proj = make_projector(student_shape, teacher_shape)
            if like is not None:
                dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else None
                proj = proj.to(device=like.device, dtype=dtype)
            self.projector = proj
        self._materialized = True

    def materialize(self, inp: LossInputs) -> None:
        s, t = self._features(inp)
        self.build(s.shape, t.shape, like=s)

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        if not self._materialized:
            self.build(student_feature.shape, teacher_feature.shape, like=student_feature)
        return fitnet_loss(student_feature, teacher_feature, self.projector)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(*self._features(inp))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, adapter={self.adapter!r}"
