"""compare_embeddings / knn_indices against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from condense.core.errors import ConfigError
from condense.evaluate import embedding as E
from condense.evaluate.embedding import compare_embeddings, cosine_rows, knn_indices


def _circle(degrees: list[float]) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


# Reference points at 0, 10, 30, 65, 110 degrees; the embedding moves the last one to 3 degrees.
REF = _circle([0, 10, 30, 65, 110])
EMB = _circle([0, 10, 30, 65, 3])


def test_hand_computed_values() -> None:
    # kNN by angle (k=2), self excluded:
    #   ref: 0 -> {1, 2}, 1 -> {0, 2}, 2 -> {1, 0}, 3 -> {2, 4}, 4 -> {3, 2}
    #   emb: 0 -> {4, 1}, 1 -> {4, 0}, 2 -> {1, 4}, 3 -> {2, 1}, 4 -> {0, 1}
    # overlaps 1/2, 1/2, 1/2, 1/2, 0 -> mean 0.4; cosines 1, 1, 1, 1, cos(107 deg).
    c = math.cos(math.radians(107))
    got = compare_embeddings(EMB, REF, k=2)
    assert got["n"] == 5 and got["k"] == 2
    assert got["topk_overlap"] == pytest.approx(0.4)
    assert got["mean_cosine"] == pytest.approx((4 + c) / 5)
    assert got["min_cosine"] == pytest.approx(c)
    assert got["p01_cosine"] == pytest.approx(c + 0.04 * (1 - c))  # position 0.01 * (5 - 1) between c and 1
    assert knn_indices(REF, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 4], [3, 2]]
    assert knn_indices(EMB, 2).tolist() == [[4, 1], [4, 0], [1, 4], [2, 1], [0, 1]]


def test_scale_invariant_and_accepts_tensors() -> None:
    scales = np.array([[2.0], [0.5], [7.0], [1.0], [3.0]])
    got = compare_embeddings(torch.tensor(EMB * scales, dtype=torch.float32), REF, k=2)
    assert got["topk_overlap"] == pytest.approx(0.4)
    assert got["mean_cosine"] == pytest.approx(compare_embeddings(EMB, REF, k=2)["mean_cosine"], abs=1e-6)


def test_identical_embeddings_agree_fully() -> None:
    x = np.random.default_rng(0).normal(size=(30, 8))
    got = compare_embeddings(x, x.copy(), k=5)
    assert got["mean_cosine"] == pytest.approx(1.0) and got["min_cosine"] == pytest.approx(1.0)
    assert got["topk_overlap"] == 1.0


def test_ties_break_to_the_lower_index() -> None:
    sq = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert knn_indices(sq, 1).ravel().tolist() == [1, 0, 1, 0]


def test_blocked_knn_matches_one_block(monkeypatch) -> None:
    x = np.random.default_rng(1).normal(size=(50, 6))
    full = knn_indices(x, 4)
    monkeypatch.setattr(E, "_BLOCK", 7 * 50)  # 7 rows per block
    assert np.array_equal(knn_indices(x, 4), full)


def test_zero_rows_have_cosine_zero() -> None:
    a = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert cosine_rows(a, np.array([[1.0, 0.0], [1.0, 0.0]])).tolist() == [0.0, 1.0]


@pytest.mark.parametrize(("emb", "ref", "k", "match"), [
    (np.zeros((5, 3)), np.zeros((5, 4)), 2, r"\(5, 3\) vs reference \(5, 4\)"),
    (np.zeros((5, 3)), np.zeros((4, 3)), 2, "same"),
    (np.zeros(5), np.zeros(5), 2, r"\(N, D\)"),
    (REF, REF, 5, "more than 5 samples"),
    (REF, REF, 0, "k must be"),
    (np.array([[np.nan, 1.0]] * 5), REF, 2, "NaN"),
])
def test_clear_errors(emb, ref, k, match) -> None:
    with pytest.raises(ConfigError, match=match):
        compare_embeddings(emb, ref, k=k)
