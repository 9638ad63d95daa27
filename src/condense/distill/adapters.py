"""Learned projectors that map a student feature onto the shape of a teacher feature.

Created from *observed* shapes (one dry-run batch), so any student can be hinted by any teacher
(a ResNet teaching a MobileNetV2): the projector belongs to the distillation task and is trained
with the student. Only the batch dimension may differ between the two shapes.

- 4-D `(B, C, H, W)`: resize the spatial dims to the teacher's (adaptive average pooling when
  the student map is larger in both dims, bilinear interpolation otherwise), then a 1x1
  `Conv2d(Cs, Ct)` and `BatchNorm2d(Ct)` (the FitNets regressor, as in the CRD reference code).
- 2-D `(B, D)`: `Linear(Ds, Dt)`.
- 3-D `(B, N, D)` token features: `Linear(Ds, Dt)` on the last dim; token counts must match
  (the sequence length is not baked in, so varying lengths are fine).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError


class Resize2d(nn.Module):
    """Resize `(B, C, H, W)` maps to a fixed `(H, W)`: adaptive avg-pool down, bilinear otherwise."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if (h, w) == self.size:
            return x
        if h >= self.size[0] and w >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def make_projector(
    student_shape: Sequence[int], teacher_shape: Sequence[int], *, batch_norm: bool = True
) -> nn.Module:
    """A trainable module mapping tensors of `student_shape` to `teacher_shape` (batch dim free).

    E.g. `(2, 16, 8, 8) -> (2, 32, 4, 4)` gives pool-to-4x4 + Conv2d(16, 32, 1) + BN(32), and
    `(2, 24) -> (2, 64)` gives Linear(24, 64). `batch_norm=False` drops the BN (conv gets a bias).
    """
    s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
    if len(s) != len(t):
        raise ConfigError(
            f"projector: student feature {s} and teacher feature {t} have different ranks; "
            "tap layers of the same kind (both conv maps, both vectors or both token sequences)"
        )
    if len(s) == 4:
        layers: list[nn.Module] = []
        if s[2:] != t[2:]:
            layers.append(Resize2d((t[2], t[3])))
        layers.append(nn.Conv2d(s[1], t[1], kernel_size=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(t[1]))
        return nn.Sequential(*layers)
    if len(s) == 2:
        return nn.Linear(s[1], t[1])
    if len(s) == 3:
        if s[1] != t[1]:
            raise ConfigError(
                f"projector: student has {s[1]} tokens and teacher {t[1]} (shapes {s} and {t}); "
                "token features need the same sequence length"
            )
        return nn.Linear(s[2], t[2])
    raise ConfigError(
        f"projector: features must be 2-D (B, D), 3-D (B, N, D) or 4-D (B, C, H, W); got {s} and {t}"
    )
