"""Data reduction: fewer input features (PCA / whitening, feature selection) or fewer samples (coresets).

One verb, `reduce_data(data, config, model=None) -> ReduceResult`, dispatches on the config:

    r = reduce_data(splits, PCAConfig(n_components=8, whiten=True))        # new Splits, (N, 8) inputs
    r = reduce_data(splits, SelectConfig(k=10, score="mutual_info"))       # new Splits, 10 columns
    r = reduce_data(splits.train, CoresetConfig(fraction=0.25), model=teacher)  # 25 % of the samples

PCA and feature selection are fitted on the training split only and applied to every split;
`r.transform` is the fitted transform as plain data (`save` / `load` JSON, `as_module()`).
A coreset of `Splits` shrinks the training split only. A mapping config names its method under
"method" ("pca", "select" or "coreset"), as a recipe's `reduce-data` stage does.
Methods register in `REDUCERS` here, by explicit import (nothing walks the package).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.core.registry import Registry
from condense.data.base import ArrayDataset, Splits
from condense.reduce.coreset import (
    CoresetConfig,
    CoresetResult,
    cover_classes,
    k_center_greedy,
    kmeans_select,
    random_select,
    select_coreset,
)
from condense.reduce.features import embed, flat_inputs
from condense.reduce.pca import PCAConfig, PCAProjection, PCATransform, fit_pca
from condense.reduce.select import FeatureSelection, FeatureSubset, SelectConfig, fit_selection

Data = Splits | ArrayDataset


@dataclasses.dataclass
class ReduceResult:
    """The reduced data (same kind as the input: `Splits` or `ArrayDataset`) and how it was made.

    `transform`: the fitted `PCATransform` / `FeatureSelection` (None for coresets);
    `positions`: coreset rows of the (training) data, in selection order (None otherwise);
    `info`: a plain-data summary (also appended to `Splits.info["reduce"]`).
    """

    data: Data
    method: str
    transform: PCATransform | FeatureSelection | None = None
    positions: np.ndarray | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ReduceMethod:
    """A registered reduction: its config class and `handler(data, config, model) -> ReduceResult`."""

    config_cls: type[Config]
    handler: Callable[[Data, Any, nn.Module | None], ReduceResult]


REDUCERS: Registry[ReduceMethod] = Registry("data-reduction method")


def _check_data(data: Any, method: str) -> None:
    from torch.utils.data import Dataset

    if not isinstance(data, Splits | ArrayDataset | Dataset):
        raise ConfigError(f"reduce_data: expected Splits, an ArrayDataset or a torch Dataset, got {type(data).__name__}")
    parts = [data.train, data.val, data.test] if isinstance(data, Splits) else [data]
    if method != "coreset" and not all(isinstance(p, ArrayDataset) for p in parts):
        raise ConfigError(f"reduce_data: {method} transforms every input in memory, so it applies to in-memory data "
                          "(ArrayDataset: tabular data, small images); for a lazy Dataset (an image folder, text) "
                          "use a coreset, which only selects samples")


def _with_splits(splits: Splits, fn: Callable[[ArrayDataset], ArrayDataset], shape: tuple[int, ...],
                 info: dict[str, Any]) -> Splits:
    return dataclasses.replace(
        splits,
        train=fn(splits.train),
        val=fn(splits.val),
        test=fn(splits.test),
        unlabelled=None if splits.unlabelled is None else fn(splits.unlabelled),
        input_shape=shape,
        info={**splits.info, "reduce": [*splits.info.get("reduce", []), info]},
    )


def _pca(data: Data, config: PCAConfig, model: nn.Module | None) -> ReduceResult:
    train = data.train if isinstance(data, Splits) else data
    tf = fit_pca(train, config, model)
    info = tf.summary()

    def fn(d: ArrayDataset) -> ArrayDataset:
        return tf.apply(d, model, config.batch_size)

    out = _with_splits(data, fn, (tf.n_components,), info) if isinstance(data, Splits) else fn(data)
    return ReduceResult(out, "pca", transform=tf, info=info)


def _select(data: Data, config: SelectConfig, model: nn.Module | None) -> ReduceResult:
    train = data.train if isinstance(data, Splits) else data
    tf = fit_selection(train, config)
    info = tf.summary()
    out = _with_splits(data, tf.apply, (tf.k,), info) if isinstance(data, Splits) else tf.apply(data)
    return ReduceResult(out, "select", transform=tf, info=info)


def _coreset(data: Data, config: CoresetConfig, model: nn.Module | None) -> ReduceResult:
    train = data.train if isinstance(data, Splits) else data
    res = select_coreset(train, config, model)
    info = {"method": "coreset", **res.info}
    if isinstance(data, Splits):
        out: Data = dataclasses.replace(
            data, train=res.data, info={**data.info, "reduce": [*data.info.get("reduce", []), info]}
        )
    else:
        out = res.data
    return ReduceResult(out, "coreset", positions=res.positions, info=info)


REDUCERS.register("pca", ReduceMethod(PCAConfig, _pca), help="PCA / whitening of inputs or features")
REDUCERS.register("select", ReduceMethod(SelectConfig, _select), help="univariate feature selection (k best)")
REDUCERS.register("coreset", ReduceMethod(CoresetConfig, _coreset), help="coreset (k-center, k-means or random)")


def resolve_config(config: Config | dict[str, Any]) -> tuple[str, Config]:
    """(method name, parsed config). A mapping names its method under "method"."""
    if isinstance(config, dict):
        data = dict(config)
        if "method" not in data:
            raise ConfigError(f"reduce_data: a mapping config needs 'method' (one of {', '.join(REDUCERS.names())})")
        name = str(data.pop("method"))
        return name, REDUCERS.get(name).config_cls.from_dict(data, where=f"reduce_data ({name})")
    for name in REDUCERS.names():
        if type(config) is REDUCERS.get(name).config_cls:
            return name, config
    raise ConfigError(
        f"reduce_data: config must be one of {', '.join(REDUCERS.get(n).config_cls.__name__ for n in REDUCERS.names())} "
        f"or a mapping with 'method', got {type(config).__name__}"
    )


def reduce_data(data: Data, config: Config | dict[str, Any], model: nn.Module | None = None) -> ReduceResult:
    """Reduce `data` (Splits or ArrayDataset) as `config` says; `model` supplies embeddings/features.

    Transforms are fitted on the training split only (`Splits.train`, or the dataset given) and
    applied unchanged to val / test / unlabelled. The caller's data is never modified.
    """
    name, cfg = resolve_config(config)
    _check_data(data, name)
    return REDUCERS.get(name).handler(data, cfg, model)


__all__ = [
    "REDUCERS",
    "CoresetConfig",
    "CoresetResult",
    "FeatureSelection",
    "FeatureSubset",
    "PCAConfig",
    "PCAProjection",
    "PCATransform",
    "ReduceMethod",
    "ReduceResult",
    "SelectConfig",
    "cover_classes",
    "embed",
    "fit_pca",
    "fit_selection",
    "flat_inputs",
    "k_center_greedy",
    "kmeans_select",
    "random_select",
    "reduce_data",
    "resolve_config",
    "select_coreset",
]
