"""LeNet-5 as Caffe ships it (`examples/mnist/lenet.prototxt`), the model of Han et al. 2015's pruning."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from condense.models.cnn import as_hw, check_int
from condense.models.registry import MODELS


@MODELS.register("lenet5")
class LeNet5(nn.Module):
    """LeNet-5, Caffe variant: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 500, ReLU, fc.

    On 1x28x28 MNIST: 24x24 -> 12x12 -> 8x8 -> 4x4, 800 features, 431,080 parameters (430,500
    weights), as in Han et al. 2015 ("Learning both Weights and Connections", Table 1: 431K).
    Like Caffe's prototxt there is no nonlinearity after the convolutions (`conv_act=True` adds a
    ReLU after each) and weights are Caffe's "xavier" filler (uniform, variance 1 / fan_in),
    biases 0. Layers: `conv1`, `act1`, `pool1`, `conv2`, `act2`, `pool2`, `flatten`, `fc1`, `act`,
    `classifier` (`act1` / `act2` are Identity unless `conv_act`).
    Tiny images still build: a convolution whose input side is under 5 pixels is zero-padded
    to keep its size, and a pool that would shrink a side below 1 pixel is skipped.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        num_classes: int = 10,
        widths: Sequence[int] = (20, 50),
        hidden: int = 500,
        conv_act: bool = False,
    ) -> None:
        super().__init__()
        in_channels = check_int("lenet5", "in_channels", in_channels)
        h, w = as_hw("lenet5", image_size)
        num_classes = check_int("lenet5", "num_classes", num_classes)
        c1, c2 = (check_int("lenet5", f"widths[{i}]", v) for i, v in enumerate(widths))
        hidden = check_int("lenet5", "hidden", hidden)

        def conv(cin: int, cout: int) -> nn.Conv2d:
            nonlocal h, w
            pad = 0 if min(h, w) >= 5 else 2
            h, w = h + 2 * pad - 4, w + 2 * pad - 4
            return nn.Conv2d(cin, cout, 5, padding=pad)

        def pool() -> nn.Module:
            nonlocal h, w
            if min(h, w) < 2:
                return nn.Identity()
            h, w = h // 2, w // 2
            return nn.MaxPool2d(2, 2)

        self.conv1 = conv(in_channels, c1)
        self.act1 = nn.ReLU() if conv_act else nn.Identity()
        self.pool1 = pool()
        self.conv2 = conv(c1, c2)
        self.act2 = nn.ReLU() if conv_act else nn.Identity()
        self.pool2 = pool()
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(c2 * h * w, hidden)
        self.act = nn.ReLU()
        self.classifier = nn.Linear(hidden, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")  # Caffe "xavier": U(+-sqrt(3 / fan_in))
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.classifier(self.act(self.fc1(self.flatten(x))))
