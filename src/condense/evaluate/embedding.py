"""How close one set of embeddings is to a reference set (e.g. int8 vs fp32, student vs teacher).

Pure functions on (N, D) tensors or arrays, row i of both describing the same sample. Two views:
- per sample, the cosine similarity of the two vectors (mean, minimum and 1st percentile: a
  mean near 1 can hide a few ruined samples);
- per neighbourhood, the overlap of each sample's k nearest neighbours (cosine, among the N
  samples, itself excluded) under both embeddings: what a retrieval / semantic-search user sees,
  insensitive to a rotation or a global scale of the space.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from condense.core.errors import ConfigError

EPS = 1e-12  # rows shorter than this are treated as zero vectors (cosine 0 with anything)
_BLOCK = 1 << 24  # float64 similarities computed at once by knn_indices


def _as_matrix(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: expected a numeric (N, D) tensor or array ({e})") from None
    if a.ndim != 2:
        raise ConfigError(f"{what}: expected an (N, D) matrix of embeddings, got shape {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise ConfigError(f"{what}: holds NaN or infinite values")
    return a


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, EPS)


def cosine_rows(emb: Any, ref: Any) -> np.ndarray:
    """Cosine similarity of row i of `emb` with row i of `ref`, shape (N,)."""
    a, b = _as_matrix(emb, "emb"), _as_matrix(ref, "ref")
    if a.shape != b.shape:
        raise ConfigError(f"embeddings of shape {tuple(a.shape)} vs reference {tuple(b.shape)}: need the same (N, D)")
    return (unit_rows(a) * unit_rows(b)).sum(1)


def knn_indices(x: Any, k: int) -> np.ndarray:
    """(N, k) indices of each row's k most cosine-similar other rows, most similar first.

    Ties break towards the lower index (stable sort), so the result is deterministic.
    """
    a = _as_matrix(x, "embeddings")
    n = a.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be an int >= 1, got {k!r}")
    if n <= k:
        raise ConfigError(f"{k} nearest neighbours need more than {k} samples (self excluded), got N={n}")
    u = unit_rows(a)
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, _BLOCK // n)  # rows per block: the (step, N) similarity block stays ~128 MB
    for i in range(0, n, step):
        sim = u[i:i + step] @ u.T
        rows = np.arange(sim.shape[0])
        sim[rows, rows + i] = -np.inf
        out[i:i + step] = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return out


def compare_embeddings(emb: Any, ref: Any, k: int = 10) -> dict[str, float | int]:
    """Agreement of `emb` with the reference `ref`, both (N, D), rows aligned.

    Returns `mean_cosine`, `min_cosine`, `p01_cosine` (1st percentile, linear interpolation) of
    the row-wise cosine similarities, `topk_overlap` (mean over samples of
    |kNN_emb(i) & kNN_ref(i)| / k, neighbours by cosine among the N samples, i itself excluded),
    and `n`, `k`. A ConfigError names a shape mismatch, non-finite values or N <= k.
    """
    cos = cosine_rows(emb, ref)
    n = int(cos.shape[0])
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be an int >= 1, got {k!r}")
    if n <= k:
        raise ConfigError(f"top-{k} overlap needs more than {k} samples (self excluded), got N={n}; lower k")
    a, b = knn_indices(emb, k), knn_indices(ref, k)
    overlap = np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, b, strict=True)])
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "p01_cosine": float(np.percentile(cos, 1)), "topk_overlap": float(overlap), "n": n, "k": k}


__all__ = ["compare_embeddings", "cosine_rows", "knn_indices", "unit_rows"]
