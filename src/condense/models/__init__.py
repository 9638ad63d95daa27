"""Model zoo: architectures by name, plus `package.module:factory` user models.

Every zoo model takes `in_channels`, `image_size` and `num_classes`, so one zoo serves 8x8 digits,
28x28 MNIST and 32x32 CIFAR; its last layer is an `nn.Linear` named `classifier`. Models register
themselves in `MODELS` when their module is imported below (explicitly; nothing walks packages).
"""
from __future__ import annotations

from condense.models import cnn, mlp, mobilenetv2, resnet, vgg  # noqa: F401  (registers the zoo)
from condense.models.edits import EDITS, record_edit, replay_edits
from condense.models.registry import MODELS, ModelSpec, build_model, model_spec

__all__ = [
    "EDITS",
    "MODELS",
    "ModelSpec",
    "build_model",
    "list_models",
    "model_spec",
    "record_edit",
    "replay_edits",
]


def list_models() -> list[tuple[str, str]]:
    """(name, one-line help) for every registered zoo model, sorted by name."""
    return [(name, MODELS.help(name)) for name in MODELS.names()]
