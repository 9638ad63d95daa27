"""Coreset selection: a small subset that covers the data, to shrink transfer and calibration sets.

Strategies (all deterministic for a seed):

* "k_center" — k-center greedy (Sener & Savarese 2018, "Active Learning for Convolutional Neural
  Networks: A Core-Set Approach"): start from one seeded random sample, then repeatedly add the
  sample farthest (Euclidean) from everything chosen so far. Covers the space, outliers included.
* "kmeans" — k-means with k = size clusters (scikit-learn, seeded); from each centroid the
  nearest not-yet-chosen sample. Picks typical samples, in proportion to density.
* "random" — a seeded uniform sample (the baseline every coreset must beat).

Distances are measured on a model's embeddings (`on: embeddings`, module `layer`, e.g. the
teacher's "flatten" output) or on the flattened raw inputs. Labels are never used to choose,
except that with `cover_classes` (and labels present) every class that occurs in the data but
not in the selection is topped up with one sample: the one nearest its class mean.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset
from condense.data.loader import as_source, collect
from condense.data.views import subset
from condense.evaluate.metrics import predict_logits
from condense.reduce.features import source_features


@dataclasses.dataclass
class CoresetConfig(Config):
    """Choose `size` samples (or a `fraction` of the data; give exactly one) by `strategy`.

    `on`: distances between the model's embeddings at `layer` ("embeddings") or between the
    flattened raw inputs ("inputs"). `stratify: predicted` splits the budget over the classes the
    model predicts (in proportion to their counts; still label-free) and runs the strategy inside
    each, so a class that is compact in embedding space is not starved. `cover_classes`: top up
    with one sample per ground-truth class missing from the selection (when labels are present).
    """

    size: int | None = None
    fraction: float | None = None
    strategy: Literal["k_center", "kmeans", "random"] = "k_center"
    on: Literal["embeddings", "inputs"] = "embeddings"
    layer: str = "flatten"
    stratify: Literal["none", "predicted"] = "none"
    cover_classes: bool = True
    seed: int = 0
    batch_size: int = 512

    def validate(self) -> None:
        if (self.size is None) == (self.fraction is None):
            raise ConfigError("CoresetConfig: give exactly one of size (a count) or fraction (of the data)")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"CoresetConfig.size must be >= 1, got {self.size}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"CoresetConfig.fraction must be in (0, 1], got {self.fraction}")
        if self.batch_size < 1:
            raise ConfigError(f"CoresetConfig.batch_size must be >= 1, got {self.batch_size}")

    def resolve_size(self, n: int) -> int:
        """The number of samples to choose from data of `n` samples."""
        if n < 1:
            raise ConfigError("coreset: the data is empty")
        k = self.size if self.size is not None else max(1, int(round(float(self.fraction) * n)))
        if k > n:
            raise ConfigError(f"coreset: size {k} is larger than the data ({n} samples)")
        return k


@dataclasses.dataclass
class CoresetResult:
    """Chosen `positions` (rows of the input data, in selection order) and the subset itself."""

    positions: np.ndarray
    data: ArrayDataset
    info: dict[str, Any]


def k_center_greedy(
    features: torch.Tensor | np.ndarray, k: int, *, seed: int = 0, initial: Sequence[int] | None = None
) -> np.ndarray:
    """Greedy k-center: positions of `k` rows of `features` (N, D), in the order they were picked.

    Starts from `initial` (already-chosen rows, returned first) or from one seeded random row;
    each step adds the row whose distance to its nearest chosen row is largest (first on ties).
    """
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    x = x.detach().double().reshape(len(x), -1).cpu()
    n = len(x)
    if not 1 <= k <= n:
        raise ConfigError(f"k-center: k must be in 1..{n} (the number of samples), got {k}")
    chosen = [int(i) for i in (initial or [])]
    if any(not 0 <= i < n for i in chosen):
        raise ConfigError(f"k-center: initial positions must be in 0..{n - 1}")
    if not chosen:
        chosen = [int(np.random.default_rng(seed).integers(n))]
    min_d = torch.full((n,), float("inf"), dtype=torch.float64)
    for c in chosen:
        min_d = torch.minimum(min_d, ((x - x[c]) ** 2).sum(1))
    while len(chosen) < k:
        nxt = int(torch.argmax(min_d))
        if not min_d[nxt] > 0:  # everything left duplicates a chosen sample: take them in order
            taken = set(chosen)
            chosen.extend([i for i in range(n) if i not in taken][: k - len(chosen)])
            break
        chosen.append(nxt)
        min_d = torch.minimum(min_d, ((x - x[nxt]) ** 2).sum(1))
    return np.asarray(chosen[:k], dtype=np.int64)


def kmeans_select(features: torch.Tensor | np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """k-means (k clusters, seeded) on `features`; for each centroid the nearest unchosen row."""
    from sklearn.cluster import KMeans

    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    n = len(x)
    if not 1 <= k <= n:
        raise ConfigError(f"k-means selection: k must be in 1..{n} (the number of samples), got {k}")
    if k == n:
        return np.arange(n, dtype=np.int64)
    km = KMeans(n_clusters=k, random_state=seed, n_init=1).fit(x)
    centers = km.cluster_centers_
    d = ((x**2).sum(1)[None, :] - 2.0 * centers @ x.T + (centers**2).sum(1)[:, None])  # (k, N)
    used = np.zeros(n, dtype=bool)
    out = []
    for row in d:
        for pos in np.argsort(row, kind="stable"):
            if not used[pos]:
                used[pos] = True
                out.append(int(pos))
                break
    return np.asarray(out, dtype=np.int64)


def random_select(n: int, k: int, *, seed: int = 0) -> np.ndarray:
    """A seeded uniform sample of `k` of `n` positions."""
    if not 1 <= k <= n:
        raise ConfigError(f"random selection: k must be in 1..{n}, got {k}")
    return np.random.default_rng(seed).choice(n, size=k, replace=False).astype(np.int64)


def missing_classes(positions: np.ndarray, targets: torch.Tensor | np.ndarray) -> list[int]:
    """Classes that occur in `targets` but not at `positions`."""
    y = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).astype(np.int64)
    present = set(y[positions].tolist())
    return [int(c) for c in np.unique(y) if int(c) not in present]


def cover_classes(
    positions: np.ndarray, targets: torch.Tensor | np.ndarray, features: torch.Tensor | np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """Append, for each class present in `targets` but missing from `positions`, the sample of that
    class nearest its class mean in `features`. Returns (positions, classes added)."""
    y = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).astype(np.int64)
    missing = missing_classes(positions, y)
    if not missing:
        return positions, []
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    extra: list[int] = []
    for c in missing:
        pos = np.flatnonzero(y == c)
        centre = x[pos].mean(0)
        extra.append(int(pos[np.argmin(((x[pos] - centre) ** 2).sum(1))]))
    return np.concatenate([positions, np.asarray(extra, dtype=np.int64)]), missing


def proportional_budgets(counts: Sequence[int], k: int) -> list[int]:
    """Split `k` over groups of sizes `counts` in proportion (largest remainders), at least 1 per
    non-empty group while `k` allows, never more than a group holds."""
    counts = [int(c) for c in counts]
    n = sum(counts)
    if not 0 < k <= n:
        raise ConfigError(f"budget {k} must be in 1..{n}")
    raw = [k * c / n for c in counts]
    out = [min(c, max(1 if c and k >= sum(1 for x in counts if x) else 0, int(r))) for c, r in zip(counts, raw, strict=True)]
    order = sorted(range(len(counts)), key=lambda i: (-(raw[i] - int(raw[i])), i))
    while sum(out) < k:
        for i in order:
            if sum(out) < k and out[i] < counts[i]:
                out[i] += 1
    while sum(out) > k:
        for i in reversed(order):
            if sum(out) > k and out[i] > 1:
                out[i] -= 1
    return out


@torch.no_grad()
def predicted_classes(model: nn.Module, data: Any, batch_size: int = 512) -> np.ndarray:
    """The model's arg-max class for every sample (eval mode; the mode is restored after)."""
    return predict_logits(model, data, batch_size=batch_size).argmax(-1).numpy().astype(np.int64)


def _pick(strategy: str, feats: torch.Tensor | None, n: int, k: int, seed: int) -> np.ndarray:
    if strategy == "random":
        return random_select(n, k, seed=seed)
    return (k_center_greedy if strategy == "k_center" else kmeans_select)(feats, k, seed=seed)


def select_coreset(data: Any, config: CoresetConfig, model: nn.Module | None = None) -> CoresetResult:
    """Choose a coreset of `data` (an ArrayDataset, or any map-style torch Dataset: the result is
    then an `IdSubset` keeping the sample ids) as `config` says (embeddings of `model` when
    `on: embeddings`)."""
    n = len(as_source(data))
    k = config.resolve_size(n)
    feats = None
    if config.strategy != "random":
        feats = source_features(data, config.on, model, config.layer, "coreset", config.batch_size)
    if config.stratify == "predicted":
        if model is None:
            raise ConfigError("coreset: stratify='predicted' needs the model's predictions; pass model=<teacher>")
        pred = predicted_classes(model, data, config.batch_size)
        groups = [np.flatnonzero(pred == c) for c in np.unique(pred)]
        parts = []
        for g, kg in zip(groups, proportional_budgets([len(g) for g in groups], k), strict=True):
            if kg:
                parts.append(g[_pick(config.strategy, None if feats is None else feats[g], len(g), kg, config.seed)])
        pos = np.concatenate(parts)
    else:
        pos = _pick(config.strategy, feats, n, k, config.seed)
    added: list[int] = []
    targets = _targets(data) if config.cover_classes else None
    if targets is not None and missing_classes(pos, targets):
        if feats is None:  # random: the top-up still takes the most typical sample of the class
            on = config.on if model is not None else "inputs"
            feats = source_features(data, on, model, config.layer, "coreset", config.batch_size)
        pos, added = cover_classes(pos, targets, feats)
    info = {
        "strategy": config.strategy,
        "on": config.on,
        **({"layer": config.layer} if config.on == "embeddings" else {}),
        "stratify": config.stratify,
        "requested": k,
        "size": int(len(pos)),
        "of": n,
        "classes_topped_up": added,
        "seed": config.seed,
    }
    return CoresetResult(positions=pos, data=subset(data, pos), info=info)


def _targets(data: Any) -> torch.Tensor | None:
    """Every sample's label (None for unlabelled data); read from memory for an ArrayDataset."""
    if isinstance(data, ArrayDataset):
        return data.targets
    return collect(data, "target") if as_source(data).labelled else None
