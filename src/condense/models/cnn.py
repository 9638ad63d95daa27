"""A small plain CNN (conv-BN-ReLU stages, global average pooling), plus the zoo's shared helpers.

The helpers (`check_int`, `check_dropout`, `as_hw`, `halve`, `ConvBNAct`, `init_weights`) are
used by every zoo file; they live here because conv-BN-activation is this file's building block.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.models.registry import MODELS


def check_int(model: str, field: str, value: object, minimum: int = 1) -> int:
    """Return `value` as an int >= `minimum`, or raise ConfigError naming the model and field."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"model {model!r}: {field} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"model {model!r}: {field} must be >= {minimum}, got {value}")
    return value


def check_dropout(model: str, value: object) -> float:
    """Return `value` as a float probability in [0, 1), or raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"model {model!r}: dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def as_hw(model: str, image_size: int | Sequence[int]) -> tuple[int, int]:
    """`image_size` as (height, width): an int means a square image."""
    if isinstance(image_size, Sequence) and not isinstance(image_size, str):
        if len(image_size) != 2:
            raise ConfigError(f"model {model!r}: image_size must be an int or [height, width], got {image_size!r}")
        return check_int(model, "image_size", image_size[0]), check_int(model, "image_size", image_size[1])
    side = check_int(model, "image_size", image_size)
    return side, side


def halve(hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after a padded 3x3 stride-2 conv (ceil division; never below 1)."""
    return math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation module (ReLU, ReLU6 or none): `conv`, `bn`, `act`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(
                in_channels, out_channels, kernel_size, stride=stride,
                padding=(kernel_size - 1) // 2, groups=groups, bias=False,
            ),
            bn=nn.BatchNorm2d(out_channels),
        )
        if act is not None:
            layers["act"] = act(inplace=False) if act in (nn.ReLU, nn.ReLU6) else act()
        super().__init__(layers)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, BN to identity, Linear ~ N(0, 0.01) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@MODELS.register("cnn")
class CNN(nn.Module):
    """Small plain CNN: `stages` stages of `depth` conv-BN-ReLU blocks, global average pool, linear.

    Stage `i` has `width * 2**i` channels; every stage after the first starts with a stride-2
    conv while the feature map is still at least 2 pixels on each side (so 8x8 digits go
    8 -> 4 -> 2 and 32x32 CIFAR 32 -> 16 -> 8 with the default 3 stages).

    Sizes on digits (1x8x8, 10 classes):
      * default (`width=32, depth=2, stages=3`): ~290K parameters, the "teacher";
      * `width=8`: ~18K parameters, the "student".
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
        num_classes: int = 10,
        width: int = 32,
        depth: int = 2,
        stages: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels = check_int("cnn", "in_channels", in_channels)
        hw = as_hw("cnn", image_size)
        num_classes = check_int("cnn", "num_classes", num_classes)
        width = check_int("cnn", "width", width)
        depth = check_int("cnn", "depth", depth)
        stages = check_int("cnn", "stages", stages)
        dropout = check_dropout("cnn", dropout)

        blocks: list[nn.Module] = []
        channels = in_channels
        for i in range(stages):
            out = width * 2**i
            stride = 2 if i > 0 and min(hw) >= 2 else 1
            if stride == 2:
                hw = halve(hw)
            stage = [ConvBNAct(channels, out, 3, stride)]
            stage += [ConvBNAct(out, out, 3, 1) for _ in range(depth - 1)]
            blocks.append(nn.Sequential(*stage))
            channels = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))
