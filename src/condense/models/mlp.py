"""Multi-layer perceptron for flattened images or tabular features."""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.models.cnn import as_hw, check_dropout, check_int
from condense.models.registry import MODELS


@MODELS.register("mlp")
class MLP(nn.Module):
    """MLP: flatten -> (Linear -> ReLU -> Dropout) per hidden size -> linear classifier.

    Input features are `in_channels * H * W` of an image, or `in_features` (tabular data, which
    takes precedence). Hidden layers sit in `features` as `features.<i>.fc` / `.act` / `.drop`.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
        num_classes: int = 10,
        in_features: int | None = None,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features is None:
            in_features = check_int("mlp", "in_channels", in_channels) * math.prod(as_hw("mlp", image_size))
        features = check_int("mlp", "in_features", in_features)
        num_classes = check_int("mlp", "num_classes", num_classes)
        if isinstance(hidden, int) and not isinstance(hidden, bool):
            hidden = (hidden,)
        if not isinstance(hidden, Sequence) or isinstance(hidden, str):
            raise ConfigError(f"model 'mlp': hidden must be a list of layer sizes, got {hidden!r}")
        sizes = [check_int("mlp", f"hidden[{i}]", h) for i, h in enumerate(hidden)]
        dropout = check_dropout("mlp", dropout)

        self.flatten = nn.Flatten(1)
        layers: list[nn.Module] = []
        for size in sizes:
            block = nn.Sequential()
            block.add_module("fc", nn.Linear(features, size))
            block.add_module("act", nn.ReLU(inplace=False))
            block.add_module("drop", nn.Dropout(dropout))
            layers.append(block)
            features = size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, num_classes)
        for block in self.features:
            nn.init.kaiming_normal_(block.fc.weight, nonlinearity="relu")
            nn.init.zeros_(block.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.flatten(x)))
