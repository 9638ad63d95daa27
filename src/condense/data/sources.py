"""The `BatchSource` classes behind `condense.data.loader.as_source`: an ArrayDataset sliced in
memory, a map-style Dataset batched by a DataLoader built per epoch, a user's own DataLoader, and
the views (without labels, a dict of tensors as a dataset). The order and batch contract is in
`condense.data.loader`'s docstring."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
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

from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset
from condense.data.items import (
    ORDER_SEED_STRIDE,
    DataError,
    Indexed,
    batch_chunks,
    count_batches,
    epoch_positions,
    loader_batch,
)


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
        for chunk in batch_chunks(pos, batch_size, drop_last)[start:]:
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
        chunks = batch_chunks(pos, batch_size, drop_last)[start:]
        if not chunks:
            return
        # a dataset that declares `uses_random = False` skips the per-item seeding (~0.4 ms an item)
        item_seed = seed * ORDER_SEED_STRIDE + epoch if getattr(self.dataset, "uses_random", True) else None
        wrapped = Indexed(self.dataset, self._ids, item_seed)
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
        wrapped = Indexed(self.dataset, self._ids, None)
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
        wrapped = Indexed(self.dataset, self._ids, None)
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


class Unlabelled(BatchSource):
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


class TensorDict(Dataset):
    """A dict of equal-length tensors as a map-style dataset of dict items."""

    uses_random = False

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = {k: torch.as_tensor(v) for k, v in data.items()}
        lens = {k: (len(v) if v.dim() else None) for k, v in self.data.items()}
        if len(set(lens.values())) != 1 or None in lens.values():
            raise DataError(f"a dict of inputs needs tensors with the same first dimension (one row per sample), "
                            f"got lengths {lens}")
        self.n = next(iter(lens.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.data.items()}
