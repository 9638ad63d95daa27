"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.models.cnn import ConvBNAct, as_hw, check_dropout, check_int, halve, init_weights
from condense.models.registry import MODELS

# expansion t, output channels c, repeats n, stride s (Table 2 of the paper; stem has stride 2 too)
_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# ImageNet maps shrink 224 -> 7 over five stride-2 layers; on small images a stride-2 layer is
# kept only if the map after it is still this big, dropping the earliest ones first (the usual
# CIFAR adaptation: stem and first bottleneck at stride 1).
_MIN_OUTPUT_SIZE = 4


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `v` to the nearest multiple of `divisor`, never going more than 10% down."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection; residual if stride 1 and in == out."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=nn.ReLU6))
        layers.append(ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6))
        layers.append(ConvBNAct(hidden, out_channels, 1, act=None))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels  # fixed at build time

    def forward(self, x: Tensor) -> Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


@MODELS.register("mobilenetv2")
class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018): inverted residuals, linear bottlenecks, ReLU6, width_mult.

    Channels are `width_mult` times the paper's, rounded to multiples of 8. Of the paper's five
    stride-2 layers only as many are kept as leave a final map of at least 4x4 (the earliest are
    dropped first): 32x32 CIFAR and 28x28 MNIST keep three (-> 4x4), 8x8 digits one (-> 4x4),
    224x224 all five (-> 7x7); images under 7 pixels are not downsampled at all.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
        num_classes: int = 10,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        in_channels = check_int("mobilenetv2", "in_channels", in_channels)
        hw = as_hw("mobilenetv2", image_size)
        num_classes = check_int("mobilenetv2", "num_classes", num_classes)
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise ConfigError(f"model 'mobilenetv2': width_mult must be a positive number, got {width_mult!r}")
        dropout = check_dropout("mobilenetv2", dropout)

        # Stride-2 positions: the stem, then the first block of every setting with s == 2.
        n_strided = 1 + sum(1 for *_, s in _SETTINGS if s == 2)
        keep, size = 0, hw
        while keep < n_strided and min(halve(size)) >= _MIN_OUTPUT_SIZE:
            size, keep = halve(size), keep + 1
        strided = iter([False] * (n_strided - keep) + [True] * keep)

        channels = _make_divisible(32 * width_mult)
        last_channels = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, 2 if next(strided) else 1, act=nn.ReLU6)]
        for t, c, n, s in _SETTINGS:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                stride = 1
                if i == 0 and s == 2:
                    stride = 2 if next(strided) else 1
                layers.append(InvertedResidual(channels, out, stride, t))
                channels = out
        layers.append(ConvBNAct(channels, last_channels, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last_channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))
