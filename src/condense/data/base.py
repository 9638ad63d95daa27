"""In-memory datasets, deterministic splits and batch iteration.

Every source returns a `Splits`: train / val / test `ArrayDataset`s made deterministically from a
seed (stratified), plus an optional `unlabelled` part when only a fraction of the training labels
is kept. Batches are dicts: `{"input": x, "target": y, "index": i}` (no "target" when unlabelled),
where `index` is the sample's stable id inside its source, used to key teacher-output caches.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from condense.core.errors import ConfigError


@dataclasses.dataclass
class ArrayDataset(Dataset):
    """Samples held as tensors. `targets` is None for unlabelled data.

    A map-style `torch.utils.data.Dataset`: `ds[i]` is `(input, label)` (a float tensor and an
    int64 scalar tensor) for labelled data and the input tensor alone for unlabelled data, so
    `DataLoader(ds, batch_size=64)` yields `[inputs, labels]` (or inputs) and `Subset(ds, idx)`
    works. `ds[a:b]` / `ds[index_tensor]` give the same, batched. condense's own loaders read the
    tensors directly (`batch`, in memory, with each sample's stable id from `indices`).
    """

    inputs: torch.Tensor
    targets: torch.Tensor | None
    indices: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.inputs)
        if self.targets is not None and len(self.targets) != n:
            raise ConfigError(f"dataset: {n} inputs but {len(self.targets)} targets")
        if len(self.indices) != n:
            raise ConfigError(f"dataset: {n} inputs but {len(self.indices)} indices")

    @classmethod
    def from_arrays(cls, inputs: Any, targets: Any | None = None) -> ArrayDataset:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        y = None if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        return cls(x, y, torch.arange(len(x)))

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: Any) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        if isinstance(i, np.integer):
            i = int(i)
        return self.inputs[i] if self.targets is None else (self.inputs[i], self.targets[i])

    @property
    def labelled(self) -> bool:
        return self.targets is not None

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"input": self.inputs[idx], "index": self.indices[idx]}
        if self.targets is not None:
            out["target"] = self.targets[idx]
        return out

    def subset(self, idx: Any) -> ArrayDataset:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.int64)
        return ArrayDataset(
            self.inputs[idx], None if self.targets is None else self.targets[idx], self.indices[idx]
        )

    def without_labels(self) -> ArrayDataset:
        return ArrayDataset(self.inputs, None, self.indices)

    def fingerprint(self) -> str:
        """Content hash of inputs, targets and indices (for cache invalidation)."""
        h = hashlib.sha256()
        for t in (self.inputs, self.targets, self.indices):
            if t is None:
                h.update(b"none")
                continue
            t = t.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]


@dataclasses.dataclass
class Splits:
    """The splits of one dataset, and what a model needs to know about its inputs.

    Each split is any data the verbs accept (`condense.data.loader.as_source`): an in-memory
    `ArrayDataset`, or a map-style torch `Dataset` that reads its samples lazily (image folders
    decoded per batch, tokenized text). `input_shape` is one sample's `input` shape (`()` when the
    samples are token sequences of varying length); `num_classes` is 0 for unlabelled corpora.
    """

    name: str
    train: Any
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    unlabelled: Any | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "unlabelled": 0 if self.unlabelled is None else len(self.unlabelled),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            **{k: v for k, v in self.info.items() if isinstance(v, (int, float, str, bool))},
        }


def stratified_take(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..len(y)-1 into (taken, rest), taking `fraction` of each class (at least 1)."""
    taken, rest = [], []
    for c in np.unique(y):
        pos = np.flatnonzero(y == c)
        pos = pos[rng.permutation(len(pos))]
        k = int(round(fraction * len(pos)))
        k = min(max(k, 1), len(pos) - 1) if len(pos) > 1 else len(pos)
        taken.append(pos[:k])
        rest.append(pos[k:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def make_splits(
    name: str,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    test: tuple[Any, Any] | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    standardize: bool = True,
    info: dict[str, Any] | None = None,
) -> Splits:
    """Deterministic stratified train / val / test (and labelled / unlabelled) splits.

    If `test` is given (an official test set), it is used as is and only val is carved from `x`.
    With `standardize`, inputs are shifted and scaled by the *training* split's per-channel mean
    and std (recorded in `info["normalize"]`), never by statistics of val or test.
    """
    for fname, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"{fname} must be in [0, 1), got {frac}")
    if labelled_fraction is not None and not 0.0 < labelled_fraction <= 1.0:
        raise ConfigError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
    x_t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y_np = np.asarray(y).astype(np.int64)
    n = len(x_t)
    if n != len(y_np):
        raise ConfigError(f"{name}: {n} inputs but {len(y_np)} labels")
    rng = np.random.default_rng(seed)
    all_pos = np.arange(n)
    if test is None:
        if test_fraction <= 0:
            raise ConfigError(f"{name}: no official test set, so test_fraction must be > 0")
        test_pos, all_pos = stratified_take(y_np, test_fraction, rng)
        x_test, y_test, test_idx = x_t[test_pos], y_np[test_pos], test_pos
    else:
        x_test = torch.as_tensor(np.asarray(test[0]), dtype=torch.float32)
        y_test = np.asarray(test[1]).astype(np.int64)
        test_idx = n + np.arange(len(x_test))  # ids after the training file's ids
    if val_fraction > 0:
        v, t = stratified_take(y_np[all_pos], val_fraction, rng)
        val_pos, train_pos = all_pos[v], all_pos[t]
    else:
        val_pos, train_pos = all_pos[:0], all_pos
    unl_pos = None
    if labelled_fraction is not None and labelled_fraction < 1.0:
        lab, unl = stratified_take(y_np[train_pos], labelled_fraction, rng)
        train_pos, unl_pos = train_pos[lab], train_pos[unl]

    info = dict(info or {})
    if standardize:
        ref = x_t[train_pos if unl_pos is None else np.concatenate([train_pos, unl_pos])]
        dims = [0] + list(range(2, ref.dim())) if ref.dim() > 2 else [0]
        mean = ref.mean(dim=dims, keepdim=True)
        std = ref.std(dim=dims, keepdim=True).clamp_min(1e-6)
        x_t = (x_t - mean) / std
        x_test = (x_test - mean) / std
        info["normalize"] = {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}

    def ds(pos: np.ndarray, labelled: bool = True) -> ArrayDataset:
        p = torch.as_tensor(pos, dtype=torch.int64)
        return ArrayDataset(x_t[p], torch.as_tensor(y_np[pos]) if labelled else None, p)

    k = int(num_classes if num_classes is not None else max(int(y_np.max()), int(y_test.max())) + 1)
    return Splits(
        name=name,
        train=ds(train_pos),
        val=ds(val_pos),
        test=ArrayDataset(x_test, torch.as_tensor(y_test), torch.as_tensor(test_idx, dtype=torch.int64)),
        num_classes=k,
        input_shape=tuple(x_t.shape[1:]),
        class_names=class_names or [str(i) for i in range(k)],
        unlabelled=None if unl_pos is None else ds(unl_pos, labelled=False),
        info=info,
    )


def iterate_batches(
    data: ArrayDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield dict batches. Shuffling uses `generator` only, so the order is a function of its seed."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield data.batch(order[start : start + batch_size])


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    if drop_last and n >= batch_size:
        return n // batch_size
    return (n + batch_size - 1) // batch_size
