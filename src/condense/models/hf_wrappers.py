"""The `nn.Module` wrappers around a transformers model, one per task (encoder, sentence embedding,
sequence / image classification, causal LM): their forward, output and input signature."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError
from condense.models.signature import DEFAULT_SIGNATURE, InputSignature, set_signature

POOLINGS = ("mean", "cls")
SIGNATURE = InputSignature(required=("input_ids", "attention_mask"), optional=("token_type_ids",), keyword=True,
                           dynamic={"input_ids": (1,), "attention_mask": (1,), "token_type_ids": (1,)})



class Pooling(nn.Module):
    """Token states (B, T, H) -> one vector per sequence (B, H); no parameters.

    "mean": average of the states whose attention_mask is 1 (Reimers & Gurevych 2019: mean
    pooling beats CLS for sentence embeddings); "cls": the first token's state.
    """

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {mode!r}")
        self.mode = mode

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class L2Normalize(nn.Module):
    """Rows scaled to unit L2 norm, so a dot product is a cosine similarity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1)


class HFModel(nn.Module):
    """Base wrapper: `self.hf` is the transformers model; subclasses choose the output."""

    task: ClassVar[str] = "encoder"
    auto_class: ClassVar[str] = "AutoModel"
    condense_output_name: ClassVar[str] = "last_hidden_state"  # the ONNX output's name

    def __init__(self, hf: nn.Module, source_dir: Path) -> None:
        super().__init__()
        self.hf = hf
        #: folder the tokenizer / sentence-transformers files are copied from when saved
        self.source_dir = Path(source_dir)
        self.build_kwargs: dict[str, Any] = {"task": self.task}
        set_signature(self, SIGNATURE)

    @property
    def config(self) -> Any:
        return self.hf.config

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             token_type_ids: torch.Tensor | None) -> Any:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": True}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        return self.hf(**kw)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(input_ids, attention_mask, token_type_ids).last_hidden_state


class HFEncoder(HFModel):
    """task "encoder": the last hidden states (B, T, H)."""


class HFSentenceEmbedding(HFModel):
    """task "sentence-embedding": pooled (mean by default) and L2-normalised states (B, H)."""

    task = "sentence-embedding"
    condense_output_name = "sentence_embedding"

    def __init__(self, hf: nn.Module, source_dir: Path, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__(hf, source_dir)
        self.pooling = Pooling(pooling)
        self.normalize = L2Normalize() if normalize else nn.Identity()
        self.build_kwargs.update(pooling=pooling, normalize=bool(normalize))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self._run(input_ids, attention_mask, token_type_ids).last_hidden_state
        return self.normalize(self.pooling(hidden, attention_mask))


class HFSequenceClassifier(HFModel):
    """task "sequence-classification": the logits tensor (B, num_labels), not a ModelOutput."""

    task = "sequence-classification"
    auto_class = "AutoModelForSequenceClassification"
    condense_output_name = "logits"

    def __init__(self, hf: nn.Module, source_dir: Path) -> None:
        super().__init__(hf, source_dir)
        self.build_kwargs["num_labels"] = int(hf.config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(input_ids, attention_mask, token_type_ids).logits


class HFCausalLM(HFModel):
    """task "causal-lm": the next-token logits (B, T, V); position t scores token t + 1."""

    task = "causal-lm"
    auto_class = "AutoModelForCausalLM"
    condense_output_name = "logits"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": True,
                              "use_cache": False}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        return self.hf(**kw).logits


class HFImageClassifier(HFModel):
    """task "image-classification": images (N, C, H, W) -> the logits tensor (N, num_labels).

    Called like a zoo CNN (`model(batch["input"])`, the default signature): the batch's `input`
    becomes transformers' `pixel_values`.
    """

    task = "image-classification"
    auto_class = "AutoModelForImageClassification"
    condense_output_name = "logits"

    def __init__(self, hf: nn.Module, source_dir: Path) -> None:
        super().__init__(hf, source_dir)
        self.build_kwargs["num_labels"] = int(hf.config.num_labels)
        set_signature(self, DEFAULT_SIGNATURE)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        channels = getattr(self.hf.config, "num_channels", None)
        if pixel_values.dim() != 4 or (isinstance(channels, int) and pixel_values.shape[1] != channels):
            raise ConfigError(f"this {type(self.hf).__name__} takes images (N, {channels or 'C'}, H, W), got "
                              f"{tuple(pixel_values.shape)}; give it data of that shape")
        try:
            return self.hf(pixel_values=pixel_values, return_dict=True).logits
        except ValueError as e:  # transformers' own input checks (e.g. ViT: "Input image size ... doesn't match")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{type(self.hf).__name__} refused images of shape {tuple(pixel_values.shape)}: "
                              f"{first}") from None


WRAPPERS: dict[str, type[HFModel]] = {"encoder": HFEncoder, "sentence-embedding": HFSentenceEmbedding,
                                       "sequence-classification": HFSequenceClassifier,
                                       "image-classification": HFImageClassifier, "causal-lm": HFCausalLM}
CLASSIFIER_TASKS = ("sequence-classification", "image-classification")


ENCODER_TASKS = ("sentence-embedding", "encoder")


def is_encoder(model: nn.Module) -> bool:
    """An hf: model whose output is an embedding / hidden states, not class scores."""
    return getattr(model, "task", None) in ENCODER_TASKS


def is_causal_lm(model: Any) -> bool:
    """An hf: decoder whose output is next-token logits (B, T, V)."""
    return getattr(model, "task", None) == "causal-lm"
