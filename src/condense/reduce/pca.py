"""PCA and whitening of inputs or of a model's features, fitted on training data only.

`fit_pca(train, PCAConfig(n_components=8))` fits scikit-learn's PCA on the training split and
keeps only plain arrays (mean, components, explained variances) in a `PCATransform`; it projects
any split the same way, saves to / loads from JSON, and turns into a frozen `PCAProjection`
module that can sit in front of a student so the deployed model still takes raw inputs.
Val / test are *transformed* with the training statistics, never used to fit.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError, InputFileError
from condense.core.io import atomic_write_json, read_json
from condense.data.base import ArrayDataset
from condense.reduce.features import source_features

FORMAT = "condense-pca/1"


@dataclasses.dataclass
class PCAConfig(Config):
    """Principal-component projection (optionally whitened) of inputs or of a model's features.

    `n_components`: an integer count, a fraction in (0, 1) of the variance to keep, or None for
    all components (pure rotation / whitening). `whiten` scales each component to unit variance
    on the training data. `on`: "inputs" (flattened raw inputs) or "features" (the output of
    module `layer` of the model passed to `reduce_data`, e.g. a teacher's "flatten" embedding).
    """

    n_components: int | float | None = None
    whiten: bool = False
    on: Literal["inputs", "features"] = "inputs"
    layer: str = "flatten"
    batch_size: int = 512

    def validate(self) -> None:
        n = self.n_components
        if isinstance(n, int) and n < 1:
            raise ConfigError(f"PCAConfig.n_components must be >= 1 (or a variance fraction in (0, 1)), got {n}")
        if isinstance(n, float) and not 0.0 < n < 1.0:
            raise ConfigError(f"PCAConfig.n_components as a variance fraction must be in (0, 1), got {n}")
        if self.batch_size < 1:
            raise ConfigError(f"PCAConfig.batch_size must be >= 1, got {self.batch_size}")


class PCAProjection(nn.Module):
    """Frozen affine map `((x.flatten(1) - mean) @ components.T) * scale` (buffers, not parameters)."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("components", components.float().clone())
        self.register_buffer("scale", scale.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.flatten(1) - self.mean) @ self.components.T) * self.scale


@dataclasses.dataclass
class PCATransform:
    """A fitted PCA as plain data: `mean` (D,), `components` (k, D), `explained_variance` (k,)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    total_variance: float
    whiten: bool
    input_shape: tuple[int, ...]
    source: dict[str, Any] = dataclasses.field(default_factory=lambda: {"on": "inputs"})

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.components.shape[1])

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return self.explained_variance / max(self.total_variance, 1e-30)

    def _scale(self) -> np.ndarray:
        if not self.whiten:
            return np.ones_like(self.explained_variance)
        return 1.0 / np.sqrt(np.maximum(self.explained_variance, 1e-12))

    def transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Project (N, ...) samples to (N, k) (flattening each sample first)."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
        x = x.reshape(len(x), -1)
        if x.shape[1] != self.n_features:
            raise ConfigError(f"PCA transform expects {self.n_features} features per sample, got {x.shape[1]}")
        return self.as_module().to(x.device)(x)

    def inverse_transform(self, z: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Map (N, k) projections back to the (flattened) original space."""
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).float()
        z = z / torch.as_tensor(self._scale(), dtype=torch.float32)
        return z @ torch.as_tensor(self.components, dtype=torch.float32) + torch.as_tensor(self.mean, dtype=torch.float32)

    def apply(self, data: ArrayDataset, model: nn.Module | None = None, batch_size: int = 512) -> ArrayDataset:
        """A new dataset whose inputs are the projections (same targets and indices)."""
        feats = source_features(data, self.source.get("on", "inputs"), model, self.source.get("layer", "flatten"),
                                "PCA", batch_size)
        return ArrayDataset(self.transform(feats).contiguous(), data.targets, data.indices)

    def as_module(self) -> PCAProjection:
        """The projection as a frozen module (prepend it to a model trained on the projections)."""
        return PCAProjection(
            torch.as_tensor(self.mean), torch.as_tensor(self.components), torch.as_tensor(self._scale())
        )

    def summary(self) -> dict[str, Any]:
        return {
            "method": "pca",
            "n_features": self.n_features,
            "n_components": self.n_components,
            "whiten": self.whiten,
            "explained_variance_ratio": float(self.explained_variance_ratio.sum()),
            **{f"source_{k}": v for k, v in self.source.items()},
        }

    # -- plain-data round trip ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "explained_variance": self.explained_variance.tolist(),
            "total_variance": float(self.total_variance),
            "whiten": bool(self.whiten),
            "input_shape": list(self.input_shape),
            "source": dict(self.source),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PCATransform:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputFileError(f"not a condense PCA transform (expected format {FORMAT!r})")
        try:
            comps = np.asarray(d["components"], dtype=np.float32)
            mean = np.asarray(d["mean"], dtype=np.float32)
            ev = np.asarray(d["explained_variance"], dtype=np.float32)
            out = cls(mean, comps, ev, float(d["total_variance"]), bool(d["whiten"]),
                      tuple(int(s) for s in d["input_shape"]), dict(d.get("source", {"on": "inputs"})))
        except (KeyError, TypeError, ValueError) as e:
            raise InputFileError(f"PCA transform: missing or malformed field ({e})") from None
        if comps.ndim != 2 or mean.shape != (comps.shape[1],) or ev.shape != (comps.shape[0],):
            raise InputFileError(
                f"PCA transform: inconsistent shapes (components {comps.shape}, mean {mean.shape}, variances {ev.shape})"
            )
        return out

    def save(self, path: str | Path) -> Path:
        """Write the transform as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PCATransform:
        data = read_json(path, "PCA transform file")
        try:
            return cls.from_dict(data)
        except InputFileError as e:
            raise InputFileError(f"{path}: {e}") from None


def fit_pca(train: ArrayDataset, config: PCAConfig | None = None, model: nn.Module | None = None) -> PCATransform:
    """Fit PCA on `train` only (its inputs, or `model`'s features at `config.layer`)."""
    from sklearn.decomposition import PCA

    config = config or PCAConfig()
    x = source_features(train, config.on, model, config.layer, "PCA", config.batch_size).double().numpy()
    n, d = x.shape
    k = config.n_components
    if isinstance(k, int):
        if k > d:
            raise ConfigError(f"PCA: n_components={k} is more than the {d} features of the data")
        if k > n:
            raise ConfigError(f"PCA: n_components={k} is more than the {n} training samples")
    if n < 2:
        raise ConfigError(f"PCA needs at least 2 training samples, got {n}")
    pca = PCA(n_components=k, whiten=config.whiten, svd_solver="full")
    pca.fit(x)
    source: dict[str, Any] = {"on": config.on}
    if config.on == "features":
        source["layer"] = config.layer
    return PCATransform(
        mean=pca.mean_.astype(np.float32),
        components=pca.components_.astype(np.float32),
        explained_variance=pca.explained_variance_.astype(np.float32),
        total_variance=float(np.var(x, axis=0, ddof=1).sum()),
        whiten=config.whiten,
        input_shape=tuple(train.inputs.shape[1:]),
        source=source,
    )
