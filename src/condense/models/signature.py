"""How a model is called with a batch: declared once per model, used by every verb.

A batch is a dict of tensors (`input`, `target`, `index`, or `input_ids`, `attention_mask`, ...).
The model's `InputSignature` says which keys it reads and whether they are passed positionally
(`model(batch["input"])`, the zoo's convention) or by keyword (`model(input_ids=..., ...)`, the
Hugging Face convention). Training, evaluation, calibration, profiling and export all call
`call_model(model, batch)`; none of them guesses.

The signature is looked up on the model (`model.condense_signature`, set by `build_model` for
zoo and Hugging Face models, or by `set_signature` / a class attribute for a user's own module);
a module that declares none is called as `model(batch["input"])`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError

RESERVED_KEYS = ("target", "index")  # batch keys condense adds; never model inputs


@dataclasses.dataclass(frozen=True)
class InputSignature:
    """The batch keys a model reads, in its forward's order.

    `required` keys must be in every batch; `optional` ones are passed when present (e.g.
    `token_type_ids`). `keyword=True` calls `model(**{key: tensor})`, else `model(*tensors)`.
    `dynamic` names the axes of each input that vary between calls beyond the batch axis 0
    (e.g. `{"input_ids": (1,), "attention_mask": (1,)}` for the sequence length): ONNX export
    makes them symbolic, `profile` varies them with `seq_len`.
    """

    required: tuple[str, ...] = ("input",)
    optional: tuple[str, ...] = ()
    keyword: bool = False
    dynamic: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        names = (*self.required, *self.optional)
        if not self.required:
            raise ConfigError("InputSignature: at least one required input key")
        if len(set(names)) != len(names):
            raise ConfigError(f"InputSignature: repeated key in {names}")
        bad = [k for k in names if k in RESERVED_KEYS]
        if bad:
            raise ConfigError(f"InputSignature: {bad} are reserved batch keys (labels / sample ids), not model inputs")
        if self.optional and not self.keyword:
            raise ConfigError("InputSignature: optional inputs need keyword=True (positions would shift)")
        for key, axes in self.dynamic.items():
            if key not in names:
                raise ConfigError(f"InputSignature: dynamic axes given for {key!r}, which is not an input ({names})")
            if not all(isinstance(a, int) and a >= 1 for a in axes):
                raise ConfigError(f"InputSignature: dynamic axes of {key!r} must be ints >= 1 (axis 0, the batch, "
                                  f"is always dynamic), got {axes!r}")
        object.__setattr__(self, "dynamic", {k: tuple(v) for k, v in self.dynamic.items()})

    def dynamic_axes(self, key: str) -> tuple[int, ...]:
        """Every varying axis of input `key`: the batch axis 0 and the declared ones."""
        return (0, *self.dynamic.get(key, ()))

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.required, *self.optional)

    def present(self, batch: Mapping[str, Any]) -> tuple[str, ...]:
        """The signature's keys this batch provides (required ones checked, with a clear error)."""
        missing = [k for k in self.required if k not in batch]
        if missing:
            raise ConfigError(
                f"the model reads batch key(s) {missing}, but the batches have only {sorted(batch)}; "
                "give the data those fields, or declare the model's inputs with "
                "condense.models.set_signature(model, InputSignature(...))"
            )
        return (*self.required, *(k for k in self.optional if k in batch))

    def to_dict(self) -> dict[str, Any]:
        return {"required": list(self.required), "optional": list(self.optional), "keyword": self.keyword,
                "dynamic": {k: list(v) for k, v in self.dynamic.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSignature:
        if not isinstance(d, Mapping):
            raise ConfigError(f"input signature must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"required", "optional", "keyword", "dynamic"}
        if unknown:
            raise ConfigError(f"input signature: unknown keys {sorted(unknown)}")
        dynamic = d.get("dynamic") or {}
        if not isinstance(dynamic, Mapping):
            raise ConfigError(f"input signature: 'dynamic' must map input names to axes, got {dynamic!r}")
        return cls(tuple(d.get("required", ("input",))), tuple(d.get("optional", ())), bool(d.get("keyword", False)),
                   {str(k): tuple(int(a) for a in v) for k, v in dynamic.items()})


DEFAULT_SIGNATURE = InputSignature()


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) if type(model).__name__ == "DistributedDataParallel" else None
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def signature_of(model: nn.Module) -> InputSignature:
    sig = getattr(unwrap(model), "condense_signature", None)
    return sig if isinstance(sig, InputSignature) else DEFAULT_SIGNATURE


def output_name(model: nn.Module) -> str:
    """The name of the model's output in an exported graph: "logits", or the model's own
    `condense_output_name` (an encoder's "last_hidden_state" / "sentence_embedding")."""
    return str(getattr(unwrap(model), "condense_output_name", "logits"))


def set_signature(model: nn.Module, signature: InputSignature) -> nn.Module:
    """Declare how `model` is called with a batch; returns the model."""
    if not isinstance(signature, InputSignature):
        raise ConfigError(f"set_signature: expected an InputSignature, got {type(signature).__name__}")
    model.condense_signature = signature  # type: ignore[assignment]
    return model


def as_batch(example: Any) -> dict[str, Any]:
    """A tensor becomes `{"input": tensor}`; a mapping is used as it is."""
    if isinstance(example, torch.Tensor):
        return {"input": example}
    if isinstance(example, Mapping):
        return dict(example)
    raise ConfigError(f"expected a tensor or a dict of tensors as model input, got {type(example).__name__}")


def model_inputs(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """The part of `batch` the model reads, in its signature's order (other keys dropped)."""
    b = as_batch(batch)
    return {k: b[k] for k in signature_of(model).present(b)}


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run `model` on a batch (a dict, or a bare tensor for the single-input convention)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    sig = signature_of(model)
    keys = sig.present(batch)
    if sig.keyword:
        return model(**{k: batch[k] for k in keys})
    return model(*(batch[k] for k in keys))


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    for v in as_batch(batch).values():
        if isinstance(v, torch.Tensor) and v.dim():
            return int(v.shape[0])
    raise ConfigError("a batch holds no batched tensor")


def slice_batch(batch: Any, n: int) -> Any:
    """The first `n` samples of every tensor in a batch."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    return {k: (v[:n] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in as_batch(batch).items()}


def repeat_batch(batch: Any, n: int) -> Any:
    """A batch of `n` samples, each a copy of the first sample of `batch` (latency inputs)."""
    if isinstance(batch, torch.Tensor):
        return batch[:1].expand(n, *batch.shape[1:]).contiguous()
    return {k: (v[:1].expand(n, *v.shape[1:]).contiguous() if isinstance(v, torch.Tensor) and v.dim() else v)
            for k, v in as_batch(batch).items()}


def batch_to(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    return {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for k, v in as_batch(batch).items()}


__all__ = [
    "DEFAULT_SIGNATURE",
    "InputSignature",
    "as_batch",
    "batch_size_of",
    "batch_to",
    "call_model",
    "model_inputs",
    "repeat_batch",
    "set_signature",
    "signature_of",
    "slice_batch",
    "unwrap",
]
