"""Model zoo: architectures by name, plus `package.module:factory` user models.

Every zoo model takes `in_channels`, `image_size` and `num_classes`, so one zoo serves 8x8 digits,
28x28 MNIST and 32x32 CIFAR; its last layer is an `nn.Linear` named `classifier`. Models register
themselves in `MODELS` when their module is imported below (explicitly; nothing walks packages).
Hugging Face encoders from a local folder are `build_model("hf:<folder>", task=...)`
(`condense.models.hf`; transformers is imported only when one is built).
"""
from __future__ import annotations

from condense.models import cnn, lenet, mlp, mobilenetv2, resnet, vgg  # noqa: F401  (registers the zoo)
from condense.models.edits import EDITS, record_edit, replay_edits
from condense.models.hf import (
    HFModel,
    build_hf_model,
    minilm_dir,
    packaged_model_dir,
    student_from_teacher,
)
from condense.models.hf_tokenizer import encode_texts, load_hf_tokenizer
from condense.models.registry import (
    MODELS,
    ModelSpec,
    UntrustedCodeError,
    build_model,
    model_spec,
    require_trusted,
)
from condense.models.signature import InputSignature, set_signature

__all__ = [
    "EDITS",
    "HFModel",
    "InputSignature",
    "MODELS",
    "ModelSpec",
    "build_hf_model",
    "build_model",
    "encode_texts",
    "list_models",
    "load_hf_tokenizer",
    "minilm_dir",
    "model_spec",
    "packaged_model_dir",
    "record_edit",
    "replay_edits",
    "set_signature",
    "student_from_teacher",
    "UntrustedCodeError",
    "require_trusted",
]


def list_models() -> list[tuple[str, str]]:
    """(name, one-line help) for every registered zoo model, sorted by name."""
    return [(name, MODELS.help(name)) for name in MODELS.names()]
