"""VGG with batch norm (Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.models.cnn import ConvBNAct, as_hw, check_dropout, check_int, init_weights
from condense.models.registry import MODELS

#: Named layer configs: ints are 3x3 conv-BN-ReLU output channels, "M" a 2x2 max pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "small": (32, "M", 64, "M", 128, 128, "M", 256, 256, "M"),
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}


@MODELS.register("vgg")
class VGG(nn.Module):
    """VGG-BN (Simonyan & Zisserman 2015): conv-BN-ReLU and max-pool stack, global avg pool, linear.

    `cfg` is a name in `CONFIGS` ("small" by default, ~1.1M parameters; "vgg11".."vgg19") or a list
    of channel counts and "M" pools. A pool that would shrink a side below 1 pixel is skipped.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
        num_classes: int = 10,
        cfg: str | Sequence[int | str] = "small",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels = check_int("vgg", "in_channels", in_channels)
        h, w = as_hw("vgg", image_size)
        num_classes = check_int("vgg", "num_classes", num_classes)
        if isinstance(cfg, str):
            if cfg not in CONFIGS:
                raise ConfigError(f"model 'vgg': unknown cfg {cfg!r}; known: {', '.join(CONFIGS)}")
            cfg = CONFIGS[cfg]
        if not isinstance(cfg, Sequence) or not any(_is_channels(v) for v in cfg):
            raise ConfigError(f"model 'vgg': cfg must list at least one channel count, got {cfg!r}")
        dropout = check_dropout("vgg", dropout)

        layers: list[nn.Module] = []
        channels = in_channels
        for i, v in enumerate(cfg):
            if v == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
            elif _is_channels(v):
                layers.append(ConvBNAct(channels, int(v), 3, 1))
                channels = int(v)
            else:
                raise ConfigError(f"model 'vgg': cfg[{i}] must be a positive channel count or 'M', got {v!r}")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


def _is_channels(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
