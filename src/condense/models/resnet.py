"""CIFAR-style ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.models.cnn import ConvBNAct, as_hw, check_int, halve, init_weights
from condense.models.registry import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; 1x1 conv-BN projection when shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvBNAct(in_channels, out_channels, 1, stride, act=None)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


@MODELS.register("resnet")
class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): depth 6n+2, three stages of n BasicBlocks, width/2x/4x channels.

    `depth=20, width=16` is the paper's ResNet-20 (~0.27M parameters on CIFAR-10). The second
    and third stages start with a stride-2 block while the feature map is at least 2 pixels on
    each side. `zero_init_residual` zeroes each block's last BN scale (Goyal et al. 2017).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
        num_classes: int = 10,
        depth: int = 20,
        width: int = 16,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        in_channels = check_int("resnet", "in_channels", in_channels)
        hw = as_hw("resnet", image_size)
        num_classes = check_int("resnet", "num_classes", num_classes)
        depth = check_int("resnet", "depth", depth)
        width = check_int("resnet", "width", width)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(
                f"model 'resnet': depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}"
            )
        n = (depth - 2) // 6

        self.stem = ConvBNAct(in_channels, width, 3, 1)
        stages: list[nn.Module] = []
        channels = width
        for i in range(3):
            out = width * 2**i
            stride = 2 if i > 0 and min(hw) >= 2 else 1
            if stride == 2:
                hw = halve(hw)
            blocks = [BasicBlock(channels, out, stride)]
            blocks += [BasicBlock(out, out, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = out
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(self.stem(x)))))
