"""What every deployment format shares and its runtime modules need (kept apart from `formats`,
which imports those modules): the missing-runtime error and the PT2E int8 scheme choice."""
from __future__ import annotations

from torch import nn

from condense.core.errors import ConfigError
from condense.models.hf import HFModel

SCHEMES = ("auto", "static", "dynamic")


class MissingExtraError(ConfigError):
    """A format's runtime is not installed: names the pip extra that brings it."""

    def __init__(self, fmt: str, extra: str, detail: str = "") -> None:
        super().__init__(f"format {fmt!r} needs its runtime, which is not installed: "
                         f"pip install 'torch-condense[{extra}]'" + (f" ({detail})" if detail else ""))


def int8_scheme(model: nn.Module, scheme: str = "auto") -> str:
    """The PT2E int8 scheme (executorch, tflite) `scheme` means for `model`: "auto" -> "dynamic"
    for a Hugging Face model (Linear weights int8 per channel, inputs quantized per call: a
    transformer's outlier activations defeat one static scale), else "static" (calibrated)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"int8 scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme != "auto":
        return scheme
    return "dynamic" if isinstance(model, HFModel) else "static"
