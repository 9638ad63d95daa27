"""Shared pieces of the lazy (read-per-item) sources: seeded splits by position, file stamps,
and a read error that stays one clear line when it is raised inside a DataLoader worker.

Lazy datasets keep their per-sample bookkeeping in a few NumPy arrays (file names as one
fixed-width bytes array, labels, sizes, mtimes, token offsets), never in Python lists of
objects: a forked DataLoader worker that touches a list of 80k `str` writes to every object's
reference count and so copies those pages, and the workers' memory then grows with the number of
samples (the "copy-on-read" problem). NumPy arrays are single buffers and stay shared.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np

from condense.core.errors import ConfigError, InputFileError
from condense.data.base import stratified_take

_WORKER_MARKER = "Original Traceback"


class SampleReadError(InputFileError):
    """A sample's file could not be read or decoded when a batch was made (exit code 3).

    PyTorch re-raises a worker's exception in the main process as `type(message)` where the
    message is the worker's whole formatted traceback; this class recovers its own one-line
    message from that text, so the error a user sees names the file and nothing else.
    """

    def __init__(self, message: str) -> None:
        if _WORKER_MARKER in message:
            last = next((ln for ln in reversed(message.strip().splitlines()) if ln.strip()), message)
            tag = f"{type(self).__qualname__}: "
            if tag in last:
                message = last.split(tag, 1)[1] + " (raised in a DataLoader worker process)"
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class SplitPositions:
    """Positions (into a source's sample list) of each split; `test` is None when the source
    brings an official test set."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    unlabelled: np.ndarray | None


def check_fractions(val_fraction: float, test_fraction: float, labelled_fraction: float | None) -> None:
    for fname, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"{fname} must be in [0, 1), got {frac}")
    if labelled_fraction is not None and not 0.0 < labelled_fraction <= 1.0:
        raise ConfigError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")


def split_positions(
    y: np.ndarray,
    *,
    name: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    official_test: bool = False,
) -> SplitPositions:
    """The stratified train / val / test (/ unlabelled) positions `make_splits` would choose for
    labels `y` and this seed: the same random draws in the same order, so a lazy source and the
    in-memory one split the same files identically. Unlabelled corpora pass `y = zeros(n)`."""
    check_fractions(val_fraction, test_fraction, labelled_fraction)
    y = np.asarray(y).astype(np.int64)
    rng = np.random.default_rng(seed)
    all_pos = np.arange(len(y))
    test_pos = None
    if not official_test:
        if test_fraction <= 0:
            raise ConfigError(f"{name}: no official test set, so test_fraction must be > 0")
        test_pos, all_pos = stratified_take(y, test_fraction, rng)
    if val_fraction > 0 and len(all_pos):
        v, t = stratified_take(y[all_pos], val_fraction, rng)
        val_pos, train_pos = all_pos[v], all_pos[t]
    else:
        val_pos, train_pos = all_pos[:0], all_pos
    unl_pos = None
    if labelled_fraction is not None and labelled_fraction < 1.0 and len(train_pos):
        lab, unl = stratified_take(y[train_pos], labelled_fraction, rng)
        train_pos, unl_pos = train_pos[lab], train_pos[unl]
    return SplitPositions(train_pos, val_pos, test_pos, unl_pos)


def group_split_positions(
    y: np.ndarray,
    groups: Sequence[str],
    *,
    name: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
) -> SplitPositions:
    """Train / val / test positions that keep each group whole (every sample of a module, a
    document, a speaker goes to one split), so test groups are unseen in training.

    Per class (a group's class is its most common label), groups are shuffled with `seed` and
    taken in that order into test while the test share stays within 1.25x `test_fraction` of the
    class's samples (a group too large waits; if all are, the smallest goes), then likewise into
    val; the rest train (always at least one group). A class with fewer than 3 groups cannot be split this way and is an
    error naming it. `labelled_fraction` then splits train samples (not groups), stratified.
    """
    check_fractions(val_fraction, test_fraction, labelled_fraction)
    if test_fraction <= 0:
        raise ConfigError(f"{name}: test_fraction must be > 0")
    y = np.asarray(y).astype(np.int64)
    if len(groups) != len(y):
        raise ConfigError(f"{name}: {len(y)} samples but {len(groups)} group values")
    names, gid = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    rng = np.random.default_rng([seed, 7])
    sizes = np.bincount(gid, minlength=len(names))
    group_class = np.array([np.bincount(y[gid == g]).argmax() for g in range(len(names))])
    split_of = np.zeros(len(names), np.int64)  # 0 train, 1 val, 2 test
    for c in np.unique(group_class):
        members = np.flatnonzero(group_class == c)
        if len(members) < 3:
            raise ConfigError(f"{name}: class {int(c)} has {len(members)} group(s); splitting by group needs "
                              "at least 3 per class (train, val and test)")
        members = list(members[rng.permutation(len(members))])
        total = int(sizes[members].sum())
        for target, code in ((test_fraction, 2), (val_fraction, 1)):
            goal, got = target * total, 0
            if goal <= 0:
                continue
            for g in list(members):  # shuffled order; a group that would overshoot by > 25 % waits
                if got < goal and len(members) > 1 and got + sizes[g] <= 1.25 * goal:
                    split_of[g], got = code, got + int(sizes[g])
                    members.remove(g)
            if got == 0 and len(members) > 1:  # every group is large: the smallest one
                g = min(members, key=lambda m: sizes[m])
                split_of[g] = code
                members.remove(g)
    sample_split = split_of[gid]
    test_pos, val_pos = np.flatnonzero(sample_split == 2), np.flatnonzero(sample_split == 1)
    train_pos = np.flatnonzero(sample_split == 0)
    unl_pos = None
    if labelled_fraction is not None and labelled_fraction < 1.0 and len(train_pos):
        lab, unl = stratified_take(y[train_pos], labelled_fraction, rng)
        train_pos, unl_pos = train_pos[lab], train_pos[unl]
    return SplitPositions(train_pos, val_pos, test_pos, unl_pos)


def names_array(names: Iterable[str]) -> np.ndarray:
    """Relative file names as one fixed-width bytes array (os.fsencode: any file name survives)."""
    arr = np.array([os.fsencode(n) for n in names], dtype=np.bytes_)
    return arr if arr.size else np.zeros(0, dtype="S1")


def file_stamps(root: str, names: np.ndarray) -> np.ndarray:
    """(n, 2) int64 array of each file's size in bytes and mtime in ns (one stat per file)."""
    out = np.empty((len(names), 2), dtype=np.int64)
    for i, n in enumerate(names):
        st = os.stat(os.path.join(root, os.fsdecode(n)))
        out[i] = (st.st_size, st.st_mtime_ns)
    return out


def hash_parts(*parts: object) -> str:
    """A short sha256 of arrays (their dtype, shape and bytes) and plain values (their repr)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


__all__ = [
    "SampleReadError",
    "SplitPositions",
    "check_fractions",
    "file_stamps",
    "group_split_positions",
    "hash_parts",
    "names_array",
    "split_positions",
]
