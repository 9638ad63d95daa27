"""Univariate feature selection (ANOVA F, chi-squared, mutual information), fitted on training data only.

`fit_selection(train, SelectConfig(k=10, score="mutual_info"))` scores every (flattened) input
feature against the training labels with scikit-learn and keeps the `k` best (`SelectKBest`).
The result is plain data (kept column indices and scores): it selects the same columns of any
split, saves to JSON and turns into a frozen `FeatureSubset` module.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError, InputFileError
from condense.core.io import atomic_write_json, read_json
from condense.data.base import ArrayDataset
from condense.reduce.features import flat_inputs

FORMAT = "condense-feature-selection/1"


@dataclasses.dataclass
class SelectConfig(Config):
    """Keep the `k` input features that score best against the labels.

    `score`: "f_classif" (ANOVA F statistic), "chi2" (chi-squared; features are first shifted
    by their training minimum so they are non-negative, as chi2 requires) or "mutual_info"
    (k-nearest-neighbour mutual information estimate, randomised by `seed`).
    """

    k: int = 10
    score: Literal["f_classif", "chi2", "mutual_info"] = "f_classif"
    seed: int = 0

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"SelectConfig.k must be >= 1, got {self.k}")


class FeatureSubset(nn.Module):
    """Frozen column selection `x.flatten(1)[:, support]`."""

    def __init__(self, support: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("support", support.long().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).index_select(1, self.support)


@dataclasses.dataclass
class FeatureSelection:
    """A fitted selection: `support` (k,) kept column indices (ascending), `scores` (D,) per feature."""

    support: np.ndarray
    scores: np.ndarray
    score: str
    input_shape: tuple[int, ...]

    @property
    def k(self) -> int:
        return int(len(self.support))

    @property
    def n_features(self) -> int:
        return int(len(self.scores))

    def transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float().reshape(len(x), -1)
        if x.shape[1] != self.n_features:
            raise ConfigError(f"feature selection expects {self.n_features} features per sample, got {x.shape[1]}")
        return x[:, torch.as_tensor(self.support, dtype=torch.int64, device=x.device)]

    def apply(self, data: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(self.transform(data.inputs).contiguous(), data.targets, data.indices)

    def as_module(self) -> FeatureSubset:
        return FeatureSubset(torch.as_tensor(self.support, dtype=torch.int64))

    def summary(self) -> dict[str, Any]:
        return {"method": "select", "score": self.score, "n_features": self.n_features, "k": self.k}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "support": [int(i) for i in self.support],
            "scores": [float(s) for s in self.scores],
            "score": self.score,
            "input_shape": list(self.input_shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSelection:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputFileError(f"not a condense feature selection (expected format {FORMAT!r})")
        try:
            out = cls(np.asarray(d["support"], dtype=np.int64), np.asarray(d["scores"], dtype=np.float64),
                      str(d["score"]), tuple(int(s) for s in d["input_shape"]))
        except (KeyError, TypeError, ValueError) as e:
            raise InputFileError(f"feature selection: missing or malformed field ({e})") from None
        if len(out.support) and (out.support.min() < 0 or out.support.max() >= len(out.scores)):
            raise InputFileError("feature selection: a kept index is outside the feature range")
        return out

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FeatureSelection:
        data = read_json(path, "feature-selection file")
        try:
            return cls.from_dict(data)
        except InputFileError as e:
            raise InputFileError(f"{path}: {e}") from None


def fit_selection(train: ArrayDataset, config: SelectConfig | None = None) -> FeatureSelection:
    """Score the features of `train` (labelled) and keep the best `config.k`."""
    from sklearn.feature_selection import SelectKBest, chi2, f_classif, mutual_info_classif

    config = config or SelectConfig()
    if train.targets is None:
        raise ConfigError("feature selection scores features against labels, but the training data is unlabelled")
    x = flat_inputs(train).double().numpy()
    y = train.targets.cpu().numpy()
    d = x.shape[1]
    if config.k > d:
        raise ConfigError(f"feature selection: k={config.k} is more than the {d} features of the data")
    if len(np.unique(y)) < 2:
        raise ConfigError("feature selection needs at least 2 classes in the training labels")
    if config.score == "chi2":
        x = x - x.min(axis=0, keepdims=True)
        func: Any = chi2
    elif config.score == "mutual_info":
        func = functools.partial(mutual_info_classif, random_state=config.seed)
    else:
        func = f_classif
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constant.*", category=UserWarning)  # score 0, documented
        sel = SelectKBest(func, k=config.k).fit(x, y)
    scores = np.nan_to_num(np.asarray(sel.scores_, dtype=np.float64), nan=0.0, posinf=np.finfo(np.float64).max)
    return FeatureSelection(
        support=np.sort(sel.get_support(indices=True)).astype(np.int64),
        scores=scores,
        score=config.score,
        input_shape=tuple(train.inputs.shape[1:]),
    )
