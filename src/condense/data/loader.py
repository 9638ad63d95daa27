"""Any data a PyTorch user has, as deterministic dict batches: `as_source(data)`.

Accepted:
- `ArrayDataset` (in memory: batches are tensor slices, no DataLoader, no workers);
- a map-style `torch.utils.data.Dataset` whose items are a tensor, an `(input, target)` tuple or
  a dict of tensors (batched by a DataLoader condense builds, with `num_workers` processes);
- a `torch.utils.data.DataLoader` the user built (used as it is: its sampler, workers, collate);
- a tensor or NumPy array of inputs (unlabelled).

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
"""
from __future__ import annotations

import hashlib
import math
import numbers
import random
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
)
from torch.utils.data._utils.collate import default_collate

from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset

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


def _chunks(positions: list[int], batch_size: int, drop_last: bool) -> list[list[int]]:
    n = len(positions)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    return [positions[s : s + batch_size] for s in range(0, stop, batch_size)]


# -- items -> batches -----------------------------------------------------------------------------
_LEAF = (torch.Tensor, np.ndarray, numbers.Number, np.generic)


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
        fields = dict(item)
        if "target" not in fields:
            for k in LABEL_KEYS:
                if k in fields:
                    fields["target"] = fields.pop(k)
                    break
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
    """Seed torch, `random` and NumPy for one item, and restore their state afterwards."""

    def __init__(self, seed: int) -> None:
        self.seed = seed % (2**63)

    def __enter__(self) -> None:
        self._torch = torch.random.get_rng_state()
        self._py = random.getstate()
        self._np = np.random.get_state()
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed % (2**32))

    def __exit__(self, *exc: Any) -> None:
        torch.random.set_rng_state(self._torch)
        random.setstate(self._py)
        np.random.set_state(self._np)


class _Indexed(Dataset):
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
        batch = dict(raw)
        if "target" not in batch:
            for k in LABEL_KEYS:
                if k in batch:
                    batch["target"] = batch.pop(k)
                    break
        return batch
    raise DataError(f"{where}: a batch is a {type(raw).__name__}; expected a tensor, (inputs, targets) or a dict of tensors")


# -- sources ---------------------------------------------------------------------------------------
class BatchSource:
    """Dict batches over some data, in a deterministic order; see the module docstring."""

    fixed_batch_size: int | None = None  # a user's DataLoader decides its own batch size

    def __len__(self) -> int:  # samples
        raise NotImplementedError

    @property
    def labelled(self) -> bool | None:
        """True / False when known without a pass over the data, None when unknown."""
        return None

    def num_batches(self, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
        return count_batches(len(self), batch_size, drop_last, world)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def head(self, n: int) -> dict[str, torch.Tensor]:
        """The first `n` samples as one batch (example inputs, shapes)."""
        return next(iter(self.batches(max(1, min(n, len(self))))))

    def fingerprint(self) -> str:
        raise NotImplementedError

    def ids(self) -> np.ndarray | None:
        """Every sample's id in position order, when known without reading the data."""
        return None


class ArraySource(BatchSource):
    def __init__(self, data: ArrayDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    @property
    def labelled(self) -> bool:
        return self.data.labelled

    def batches(self, batch_size, *, shuffle=False, seed=0, epoch=0, drop_last=False, start=0, rank=0, world=1,
                num_workers=0, pin_memory=False):
        pos = epoch_positions(len(self.data), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world=world,
                              drop_last=drop_last)
        for chunk in _chunks(pos, batch_size, drop_last)[start:]:
            b = self.data.batch(torch.tensor(chunk, dtype=torch.int64))
            yield {k: v.pin_memory() for k, v in b.items()} if pin_memory else b

    def head(self, n: int) -> dict[str, torch.Tensor]:
        return self.data.batch(torch.arange(max(1, min(n, len(self.data)))))

    def fingerprint(self) -> str:
        return self.data.fingerprint()

    def ids(self) -> np.ndarray:
        return self.data.indices.numpy().astype(np.int64)


class DatasetSource(BatchSource):
    """A map-style Dataset, batched by a DataLoader built per epoch (workers, pinned memory)."""

    def __init__(self, dataset: Dataset, ids: np.ndarray | None = None) -> None:
        if isinstance(dataset, IterableDataset):
            raise DataError(f"{type(dataset).__name__} is an IterableDataset; condense needs a map-style Dataset "
                            "(len() and [i]) so each sample has a stable id and epochs have a fixed order")
        try:
            self.n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(f"{type(dataset).__name__} has no len(); condense needs a map-style Dataset") from None
        self.dataset = dataset
        self._ids = None if ids is None else np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    @property
    def labelled(self) -> bool | None:
        flag = getattr(self.dataset, "labelled", None)
        if isinstance(flag, bool):
            return flag
        if self.n == 0:
            return None
        return "target" in self.head(1)

    def batches(self, batch_size, *, shuffle=False, seed=0, epoch=0, drop_last=False, start=0, rank=0, world=1,
                num_workers=0, pin_memory=False):
        pos = epoch_positions(self.n, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world=world, drop_last=drop_last)
        chunks = _chunks(pos, batch_size, drop_last)[start:]
        if not chunks:
            return
        # a dataset that declares `uses_random = False` skips the per-item seeding (~0.4 ms an item)
        item_seed = seed * ORDER_SEED_STRIDE + epoch if getattr(self.dataset, "uses_random", True) else None
        wrapped = _Indexed(self.dataset, self._ids, item_seed)
        loader = DataLoader(wrapped, batch_sampler=chunks, num_workers=num_workers, collate_fn=wrapped.collate,
                            pin_memory=pin_memory)
        it = iter(loader)
        try:
            yield from it
        finally:  # a consumer that stops early (evaluate on a head, a failed step) ends the workers now
            shutdown = getattr(it, "_shutdown_workers", None)
            if callable(shutdown):
                shutdown()

    def head(self, n: int) -> dict[str, torch.Tensor]:
        wrapped = _Indexed(self.dataset, self._ids, None)
        return wrapped.collate([wrapped[i] for i in range(max(1, min(n, self.n)))])

    def fingerprint(self) -> str:
        own = getattr(self.dataset, "fingerprint", None)
        h = hashlib.sha256()
        if callable(own):
            h.update(str(own()).encode())
        else:  # shallow: the class, the length and the content of a few items
            h.update(f"{type(self.dataset).__module__}.{type(self.dataset).__qualname__}:{self.n}".encode())
            for i in sorted({0, 1, self.n // 2, self.n - 1}):
                if 0 <= i < self.n:
                    _hash_batch(h, self.head_at(i))
        if self._ids is not None:
            h.update(self._ids.tobytes())
        return h.hexdigest()[:16]

    def head_at(self, i: int) -> dict[str, torch.Tensor]:
        wrapped = _Indexed(self.dataset, self._ids, None)
        return wrapped.collate([wrapped[i]])

    def ids(self) -> np.ndarray:
        return self._ids if self._ids is not None else np.arange(self.n, dtype=np.int64)


class LoaderSource(BatchSource):
    """A user's DataLoader, used as built. Its sampler decides the order (`set_epoch` is called when
    it has one); `index` is the running position when the loader is sequential and gives none."""

    def __init__(self, loader: DataLoader) -> None:
        try:
            self.steps = len(loader)
        except TypeError:
            raise DataError("the DataLoader has no len() (an IterableDataset?); condense needs to know the "
                            "number of batches per epoch") from None
        self.loader = loader
        self.fixed_batch_size = loader.batch_size
        self.sequential = isinstance(loader.sampler, SequentialSampler) and loader.batch_sampler is not None

    def __len__(self) -> int:
        try:
            return len(self.loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            return self.steps * (self.loader.batch_size or 1)

    def num_batches(self, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
        return self.steps

    def _sampler_with_epoch(self) -> Any:
        for s in (self.loader.sampler, getattr(self.loader.batch_sampler, "sampler", None)):
            if hasattr(s, "set_epoch"):
                return s
        return None

    def batches(self, batch_size, *, shuffle=False, seed=0, epoch=0, drop_last=False, start=0, rank=0, world=1,
                num_workers=0, pin_memory=False):
        sampler = self._sampler_with_epoch()
        if world > 1 and not isinstance(sampler, DistributedSampler):
            raise ConfigError(f"under torchrun ({world} processes) a DataLoader needs a DistributedSampler; or pass "
                              "the Dataset itself and condense shards it")
        if sampler is not None:
            sampler.set_epoch(epoch)
        seen = 0
        for i, raw in enumerate(islice(iter(self.loader), start, None), start=start):
            batch = loader_batch(raw, "DataLoader")
            n = _first_len(batch)
            if "index" not in batch and self.sequential and self.loader.batch_size:
                first = i * self.loader.batch_size
                batch["index"] = torch.arange(first, first + n)
            seen += n
            yield batch

    def head(self, n: int) -> dict[str, torch.Tensor]:
        batch = loader_batch(next(iter(self.loader)), "DataLoader")
        return {k: v[:n] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in batch.items()}

    def fingerprint(self) -> str:
        ds = getattr(self.loader, "dataset", None)
        base = DatasetSource(ds).fingerprint() if ds is not None and not isinstance(ds, IterableDataset) else "iterable"
        return hashlib.sha256(f"{base}:{type(self.loader.sampler).__name__}:{self.loader.batch_size}".encode()).hexdigest()[:16]


class IdSubset(Dataset):
    """The samples of `dataset` at `positions`, keeping their ids (`sample_ids`): a coreset of a
    Dataset is still keyed like the full data (teacher cache, CRD's memory bank)."""

    def __init__(self, dataset: Dataset, positions: Sequence[int] | np.ndarray) -> None:
        self.dataset = dataset
        self.positions = np.asarray(positions, dtype=np.int64)
        parent = getattr(dataset, "sample_ids", None)
        base = np.arange(len(dataset)) if parent is None else np.asarray(parent, dtype=np.int64)  # type: ignore[arg-type]
        self.sample_ids = base[self.positions]
        if callable(getattr(dataset, "collate", None)):
            self.collate = dataset.collate  # type: ignore[attr-defined]
        flag = getattr(dataset, "labelled", None)
        if isinstance(flag, bool):
            self.labelled = flag
        self.uses_random = getattr(dataset, "uses_random", True)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.positions[i])]

    def fingerprint(self) -> str:
        h = hashlib.sha256(DatasetSource(self.dataset).fingerprint().encode())
        h.update(self.positions.tobytes())
        return h.hexdigest()[:16]


def subset(data: Any, positions: Sequence[int] | np.ndarray) -> Any:
    """The samples of `data` at `positions` (an ArrayDataset stays one), ids kept."""
    if isinstance(data, ArrayDataset):
        return data.subset(positions)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        return IdSubset(data, positions)
    raise DataError(f"cannot take a subset of a {type(data).__name__}; pass the Dataset itself")


def _first_len(batch: Mapping[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim():
            return int(v.shape[0])
    return 0


def _hash_batch(h: Any, batch: Mapping[str, Any]) -> None:
    for k in sorted(batch):
        v = batch[k]
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{k}{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


class _Unlabelled(BatchSource):
    """A view of a source without its `target` field."""

    def __init__(self, inner: BatchSource) -> None:
        self.inner = inner
        self.fixed_batch_size = inner.fixed_batch_size

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def labelled(self) -> bool:
        return False

    def num_batches(self, batch_size, drop_last=False, world=1):
        return self.inner.num_batches(batch_size, drop_last, world)

    def batches(self, batch_size, **kw):
        for b in self.inner.batches(batch_size, **kw):
            b.pop("target", None)
            yield b

    def head(self, n):
        b = self.inner.head(n)
        b.pop("target", None)
        return b

    def fingerprint(self):
        return "u" + self.inner.fingerprint()

    def ids(self):
        return self.inner.ids()


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
    if isinstance(data, Dataset):
        ids = getattr(data, "sample_ids", None)
        return DatasetSource(data, None if ids is None else np.asarray(ids, dtype=np.int64))
    raise DataError(f"expected an ArrayDataset, a torch Dataset, a DataLoader or a tensor of inputs, "
                    f"got {type(data).__module__}.{type(data).__name__}")


def without_labels(data: Any) -> BatchSource:
    src = as_source(data)
    return src if src.labelled is False else _Unlabelled(src)


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


class IdConcat(Dataset):
    """Several datasets one after the other, each sample keeping its id (`sample_ids`)."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.sample_ids = np.concatenate([as_source(p).ids() for p in self.parts]) if self.parts else np.zeros(0, np.int64)
        if len(np.unique(self.sample_ids)) != len(self.sample_ids):
            raise DataError("concatenated datasets share sample ids; give each part distinct ids")
        self.uses_random = any(getattr(p, "uses_random", True) for p in self.parts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Any:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        part = self.parts[k]
        j = i - int(self.offsets[k])
        if isinstance(part, ArrayDataset):
            b = part.batch(torch.tensor([j]))
            return {key: v[0] for key, v in b.items() if key != "index"}
        return part[j]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.parts:
            h.update(as_source(p).fingerprint().encode())
        return h.hexdigest()[:16]


def concat(parts: Sequence[Any]) -> Any:
    """The samples of `parts` in order (ArrayDatasets stay one in memory), ids kept."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise DataError("nothing to concatenate")
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, ArrayDataset) for p in parts):
        labelled = all(p.labelled for p in parts)
        return ArrayDataset(torch.cat([p.inputs for p in parts]),
                            torch.cat([p.targets for p in parts]) if labelled else None,
                            torch.cat([p.indices for p in parts]))
    return IdConcat(parts)


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
    "IdSubset",
    "LoaderSource",
    "as_source",
    "collect",
    "concat",
    "count_batches",
    "epoch_positions",
    "example_batch",
    "example_inputs",
    "heldout_inputs",
    "item_fields",
    "subset",
    "without_labels",
]
