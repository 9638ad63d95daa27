"""How condense reads a user's items: the epoch order and items -> dict batches.

`epoch_positions` is the sample order of an epoch (DistributedSampler's, a pure function of the
seed and the epoch; see `condense.data.loader` for why); `item_fields` / `collate_fields` turn a
Dataset's items (tensor, `(input, target)` tuple or dict) into one dict batch; `Indexed` makes
each item under a random state seeded from (seed, epoch, sample id) so random transforms repeat
exactly in workers and after a resume; `loader_batch` reads a batch of a user's own DataLoader.
"""
from __future__ import annotations

import math
import numbers
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from condense.core.errors import ConfigError

ORDER_SEED_STRIDE = 1_000_003
LABEL_KEYS = ("label", "labels")


class DataError(ConfigError):
    """A dataset item or batch cannot be used (wrong type, missing field, unequal shapes)."""


# -- order ----------------------------------------------------------------------------------------
class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def epoch_positions(
    n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world: int = 1, drop_last: bool = False
) -> list[int]:
    """Dataset positions rank `rank` of `world` visits in `epoch` (DistributedSampler's order)."""
    sampler = DistributedSampler(_Sized(n), num_replicas=world, rank=rank, shuffle=shuffle,
                                 seed=seed * ORDER_SEED_STRIDE, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return list(sampler)


def per_rank_samples(n: int, world: int, drop_last: bool) -> int:
    if world == 1:
        return n
    return math.ceil((n - world) / world) if drop_last and n % world else math.ceil(n / world)


def count_batches(n: int, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
    """Batches per epoch on each rank (`batch_size` is the per-rank batch)."""
    m = per_rank_samples(n, world, drop_last)
    if drop_last and m >= batch_size:
        return m // batch_size
    return (m + batch_size - 1) // batch_size


def batch_chunks(positions: list[int], batch_size: int, drop_last: bool) -> list[list[int]]:
    n = len(positions)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    return [positions[s : s + batch_size] for s in range(0, stop, batch_size)]


# -- items -> batches -----------------------------------------------------------------------------
_LEAF = (torch.Tensor, np.ndarray, numbers.Number, np.generic)


def _named_fields(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A dict item or batch as condense's fields: `label` / `labels` read as `target`."""
    fields = dict(mapping)
    if "target" not in fields:
        key = next((k for k in LABEL_KEYS if k in fields), None)
        if key is not None:
            fields["target"] = fields.pop(key)
    return fields


def item_fields(item: Any, position: int) -> dict[str, Any]:
    """One dataset item as a dict of fields (see the module docstring)."""
    if isinstance(item, _LEAF) and not isinstance(item, bool | str):
        fields = {"input": item}
    elif isinstance(item, tuple | list):
        if len(item) == 1:
            fields = {"input": item[0]}
        elif len(item) == 2:
            fields = {"input": item[0], "target": item[1]}
        else:
            raise DataError(f"dataset item {position} is a {type(item).__name__} of {len(item)} elements; "
                            "condense reads (input,) or (input, target) tuples, or a dict of named fields")
    elif isinstance(item, Mapping):
        fields = _named_fields(item)
        if "index" in fields:
            raise DataError(f"dataset item {position}: the key 'index' is reserved (condense adds each sample's id)")
    else:
        raise DataError(f"dataset item {position} is a {type(item).__module__}.{type(item).__name__}, which cannot be "
                        "batched; items must be a tensor, an (input, target) tuple or a dict of tensors "
                        "(convert it in the Dataset, e.g. with a transform to a tensor)")
    for k, v in fields.items():
        if not isinstance(v, _LEAF) or isinstance(v, str):
            raise DataError(f"dataset item {position}: field {k!r} is a {type(v).__module__}.{type(v).__name__}, "
                            "which cannot be batched; expected a tensor, a NumPy array or a number")
    return fields


def collate_fields(rows: Sequence[dict[str, Any]], positions: Sequence[int]) -> dict[str, torch.Tensor]:
    """Stack per-item fields into a batch (same keys and shapes required, named on a mismatch)."""
    keys = list(rows[0])
    out: dict[str, torch.Tensor] = {}
    for row, pos in zip(rows, positions, strict=True):
        if list(row) != keys:
            raise DataError(f"dataset items {positions[0]} and {pos} have different fields: {keys} vs {list(row)}")
    for k in keys:
        values = [r[k] for r in rows]
        try:
            out[k] = default_collate(values)
        except RuntimeError as e:
            shapes = {tuple(np.shape(v)) for v in values}
            raise DataError(f"field {k!r} of dataset items {list(positions)[:4]}...: shapes differ ({sorted(shapes)[:3]}); "
                            "items of one batch must have equal shapes (resize/pad them, or give the dataset a "
                            f"`collate` method): {e}") from None
        if isinstance(out[k], torch.Tensor) and out[k].dtype == torch.float64:
            out[k] = out[k].float()
    return out


class _RandomState:
    """Seed torch's CPU generator, `random` and NumPy for one item, and restore their state
    afterwards. Only the CPU generator: `torch.manual_seed` also queues a seed for every device
    type with a recorded stack trace (an epoch over 2,000 items: 0.69 against 0.31 CPU-s,
    benchmarks/overheads.py); the CPU stream it gives is the same."""

    def __init__(self, seed: int) -> None:
        self.seed = seed % (2**63)

    def __enter__(self) -> None:
        self._torch = torch.random.get_rng_state()
        self._py = random.getstate()
        self._np = np.random.get_state()
        torch.random.default_generator.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed % (2**32))

    def __exit__(self, *exc: Any) -> None:
        torch.random.set_rng_state(self._torch)
        random.setstate(self._py)
        np.random.set_state(self._np)


class Indexed(Dataset):
    """Wraps a user's Dataset: `[pos] -> (id, fields)`, made under a per-(seed, epoch, id) random state."""

    def __init__(self, dataset: Dataset, ids: np.ndarray | None, item_seed: int | None) -> None:
        self.dataset, self.ids, self.item_seed = dataset, ids, item_seed
        self.raw = callable(getattr(dataset, "collate", None))  # the dataset batches its own items

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, pos: int) -> tuple[int, Any]:
        sid = int(self.ids[pos]) if self.ids is not None else int(pos)
        if self.item_seed is None:
            item = self.dataset[pos]
        else:
            with _RandomState(self.item_seed * 2_654_435_761 + sid):
                item = self.dataset[pos]
        return sid, (item if self.raw else item_fields(item, pos))

    def collate(self, pairs: list[tuple[int, Any]]) -> dict[str, torch.Tensor]:
        ids = [p[0] for p in pairs]
        if self.raw:
            batch = dict(self.dataset.collate([p[1] for p in pairs]))  # type: ignore[attr-defined]
        else:
            batch = collate_fields([p[1] for p in pairs], ids)
        batch["index"] = torch.tensor(ids, dtype=torch.int64)
        return batch


def loader_batch(raw: Any, where: str) -> dict[str, torch.Tensor]:
    """A batch from a user's DataLoader as a dict (tensor -> input; (x, y) -> input, target)."""
    if isinstance(raw, torch.Tensor):
        return {"input": raw}
    if isinstance(raw, tuple | list):
        if len(raw) in (1, 2) and all(isinstance(v, torch.Tensor) for v in raw):
            return {"input": raw[0]} if len(raw) == 1 else {"input": raw[0], "target": raw[1]}
        raise DataError(f"{where}: a batch is a {type(raw).__name__} of {len(raw)} elements; expected a tensor, "
                        "(inputs, targets) or a dict of tensors")
    if isinstance(raw, Mapping):
        return _named_fields(raw)
    raise DataError(f"{where}: a batch is a {type(raw).__name__}; expected a tensor, (inputs, targets) or a dict of tensors")
