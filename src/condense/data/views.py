"""Subsets and concatenations of any data condense reads, each sample keeping its id.

A coreset of a Dataset, or the labelled split plus the unlabelled one, is still keyed like the
full data: the teacher-output cache and CRD's memory bank look samples up by id (`sample_ids`).
An `ArrayDataset` stays one in memory; any other map-style Dataset is wrapped.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from condense.data.base import ArrayDataset
from condense.data.items import DataError
from condense.data.loader import DatasetSource, as_source


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
