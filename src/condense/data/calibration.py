"""Calibration data: one reader for every method that runs a model on sample batches (static PTQ,
GPTQ, QAT, the transformer int8 plan, and the pruning / vocabulary methods that read data).

A calibration set is anything the verbs take as data (`condense.data.loader.as_source`: an
ArrayDataset, a torch Dataset, a DataLoader, a tensor of inputs) or an iterable of batches
(tensors, `(inputs, targets)` tuples, or dicts of tensors). Every batch comes out as a dict, so a
model is run on it with `call_model` as its input signature says: an image CNN reads `input`, a
Hugging Face encoder `input_ids` / `attention_mask`.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset
from condense.data.loader import DataError, as_source, loader_batch
from condense.models.signature import batch_size_of, batch_to, call_model, model_inputs, slice_batch

BATCH_SIZE = 64


def is_data(obj: Any) -> bool:
    """Data the loaders read (a dataset, DataLoader, ArrayDataset or tensor), not a batch list."""
    return isinstance(obj, ArrayDataset | Dataset | DataLoader | Tensor)


def iter_calibration(calibration: Any, limit: int | None = None, batch_size: int = BATCH_SIZE) -> Iterator[dict[str, Any]]:
    """Batch dicts from `calibration`, stopping after `limit` samples (the last batch is cut)."""
    if calibration is None:
        raise ConfigError("this quantization method needs calibration data (calibration=None)")
    if isinstance(calibration, Tensor) and calibration.dim() == 0:
        raise ConfigError("calibration tensor must be a batch (N, ...)")
    if is_data(calibration):
        batches: Any = as_source(calibration).batches(batch_size)
    elif isinstance(calibration, dict):
        batches = [calibration]
    else:
        try:
            batches = iter(calibration)
        except TypeError:
            raise ConfigError(f"calibration must be data (a Dataset, DataLoader, ArrayDataset, tensor) or an iterable "
                              f"of batches, got {type(calibration).__name__}") from None
    seen = 0
    for raw in batches:
        try:
            batch = raw if isinstance(raw, dict) else loader_batch(raw, "calibration")
        except DataError as e:
            raise ConfigError(f"calibration batches must be tensors, (inputs, targets) tuples or dicts of tensors: {e}") from None
        n = batch_size_of(batch)
        if n == 0:
            continue
        if limit is not None:
            batch = slice_batch(batch, limit - seen)
            n = batch_size_of(batch)
        seen += n
        yield batch
        if limit is not None and seen >= limit:
            return


def calibration_list(calibration: Any, max_batches: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """`iter_calibration` materialised (at most `max_batches` batches); an empty set is an error."""
    out: list[dict[str, Any]] = []
    for b in iter_calibration(calibration, limit):
        out.append(b)
        if max_batches is not None and len(out) >= max_batches:
            break
    if not out:
        raise ConfigError("calibration set is empty: give at least one non-empty batch")
    return out


def run_batch(model: nn.Module, batch: Any) -> Any:
    """Forward one calibration batch (a batch dict or a bare tensor) on the model's device."""
    ref = next(model.parameters(), None)
    if ref is None:
        ref = next(model.buffers(), torch.empty(0))
    if not isinstance(batch, dict | Tensor):
        batch = loader_batch(batch, "calibration")
    try:
        inputs = batch if isinstance(batch, Tensor) else model_inputs(model, batch)
        return call_model(model, batch_to(inputs, ref.device))
    except (RuntimeError, TypeError, ValueError) as e:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else {k: tuple(v.shape) for k, v in batch.items()
                                                                        if isinstance(v, Tensor)}
        raise ConfigError(f"a calibration batch ({shape}) does not fit the model: {e}") from None


def input_tensor(batch: dict[str, Any]) -> Tensor:
    """The `input` field of a batch, for methods that trace a single-input model."""
    x = batch.get("input")
    if not isinstance(x, Tensor):
        raise ConfigError(f"this method calibrates models called as model(x) (batches with an 'input' tensor); "
                          f"these batches have {sorted(batch)}. For a transformer on token batches use "
                          "method 'transformer' (int8 ONNX with SmoothQuant), 'dynamic' or 'weight_only'")
    return x


__all__ = ["calibration_list", "input_tensor", "iter_calibration", "run_batch"]
