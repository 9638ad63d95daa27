"""Any data a PyTorch user has, as deterministic dict batches: `as_source(data)`.

Accepted:
- `ArrayDataset` (in memory: batches are tensor slices, no DataLoader, no workers);
- a map-style `torch.utils.data.Dataset` whose items are a tensor, an `(input, target)` tuple or
  a dict of tensors (batched by a DataLoader condense builds, with `num_workers` processes);
- a `torch.utils.data.DataLoader` the user built (used as it is: its sampler, workers, collate);
- a tensor or NumPy array of inputs (unlabelled);
- a dict of equal-length tensors (a tokenized batch: `input_ids`, `attention_mask`, ...), one
  sample per row; a `label` / `labels` key is the target.

Every batch is a dict. A tensor item becomes `input`; a tuple `(input, target)`; a dict keeps
its keys, except that `label` / `labels` are read as `target`. `index` is the sample's stable id:
its position in the dataset (or `ArrayDataset.indices`), which the teacher cache and CRD key on.

Order: an epoch's sample order is what `torch.utils.data.DistributedSampler` gives for
(seed * 1_000_003, epoch): a pure function of the seed and the epoch, identical in one process
and under `torchrun`, where rank r of W takes every W-th sample of the same permutation, so the
W per-rank batches of step k together are exactly the single-process batch k of W times the size.
Items are made under a random state seeded from (seed, epoch, index), so random transforms inside
a user's `__getitem__` give the same result in the main process, in any worker, and after a
resume mid-epoch.

The source classes live in `condense.data.sources` (re-exported here).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from condense.data.base import ArrayDataset
from condense.data.items import (  # noqa: F401  (re-exported: the loader API names them)
    LABEL_KEYS,
    ORDER_SEED_STRIDE,
    DataError,
    Indexed,
    batch_chunks,
    collate_fields,
    count_batches,
    epoch_positions,
    item_fields,
    loader_batch,
    per_rank_samples,
)
from condense.data.sources import (
    ArraySource,
    BatchSource,
    DatasetSource,
    LoaderSource,
    TensorDict,
    Unlabelled,
)


def as_source(data: Any) -> BatchSource:
    """Wrap any accepted data (see the module docstring) as a `BatchSource`."""
    if isinstance(data, BatchSource):
        return data
    if isinstance(data, ArrayDataset):
        return ArraySource(data)
    if isinstance(data, DataLoader):
        return LoaderSource(data)
    if isinstance(data, torch.Tensor | np.ndarray):
        x = torch.as_tensor(data)
        if x.dim() == 0:
            raise DataError("expected a batch of inputs (N, ...), got a scalar tensor")
        return ArraySource(ArrayDataset(x, None, torch.arange(len(x))))
    if isinstance(data, Mapping) and data and all(isinstance(v, torch.Tensor | np.ndarray) for v in data.values()):
        return DatasetSource(TensorDict(data))
    if isinstance(data, Dataset):
        ids = getattr(data, "sample_ids", None)
        return DatasetSource(data, None if ids is None else np.asarray(ids, dtype=np.int64))
    raise DataError(f"expected an ArrayDataset, a torch Dataset, a DataLoader or a tensor of inputs, "
                    f"got {type(data).__module__}.{type(data).__name__}")


def without_labels(data: Any) -> BatchSource:
    src = as_source(data)
    return src if src.labelled is False else Unlabelled(src)


def example_batch(data: Any, n: int = 1) -> dict[str, torch.Tensor]:
    """The first `n` samples of `data` as a batch, without `target` / `index` (model inputs only)."""
    batch = as_source(data).head(n)
    return {k: v for k, v in batch.items() if k not in ("target", "index")}


def example_inputs(data: Any, n: int = 1) -> Any:
    """Like `example_batch`, but a single-`input` batch is returned as its tensor."""
    batch = example_batch(data, n)
    return batch["input"] if list(batch) == ["input"] else batch


def heldout_inputs(data: Any, n: int = 512) -> Any:
    """The model inputs of the first `n` samples (agreement checks of int8 exports, calibration):
    a tensor for single-input data, else a batch dict. Reads only those samples."""
    return example_inputs(data, min(n, len(as_source(data))))


def collect(data: Any, key: str = "input", batch_size: int = 512) -> torch.Tensor:
    """One field of every sample, concatenated in position order (for in-memory methods)."""
    src = as_source(data)
    if isinstance(src, ArraySource) and key == "input":
        return src.data.inputs
    parts = []
    for b in src.batches(batch_size):
        if key not in b:
            raise DataError(f"the batches have no field {key!r} (fields: {sorted(b)})")
        parts.append(b[key])
    return torch.cat(parts)


__all__ = [
    "ArraySource",
    "BatchSource",
    "DataError",
    "DatasetSource",
    "LoaderSource",
    "as_source",
    "collect",
    "count_batches",
    "epoch_positions",
    "example_batch",
    "example_inputs",
    "heldout_inputs",
    "item_fields",
    "without_labels",
]
