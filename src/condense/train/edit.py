"""`edit_and_recover`: the one implementation of "edit a model's structure, then win the accuracy
back", shared by every structural method (pruning, low-rank factorization, depth reduction).

    model, info = edit_and_recover(model, lambda m: factorize(m, cfg, data=train), RecoverConfig(method="distill"),
                                   splits.train, splits.val)

The steps, each recorded in `info` under the same keys for every method:

1. the teacher of a "distill" recovery is a frozen copy of the model taken before the edit;
2. params / MACs (`before`) and the validation metric (`val.before`: accuracy, or for an encoder
   mean cosine to the unedited model) are measured;
3. `edit(model)` runs; `edited` and `val.edited` are measured;
4. BatchNorm statistics are re-estimated (adaptive BN, Li et al. 2020 "EagleEye"),
   `bn_recalibration_samples` and `val.edited_bn_recalibrated`;
5. the recovery runs through the one `fit()` loop (`condense.train.recover.recover`): `fit`;
6. `after_recovery(model, info)` (e.g. checking that pruning masks held) and `recovered`,
   `val.recovered`, `params_fraction`, `macs_fraction`.

`info["metric"]` names what `val` holds. The edit is deterministic given the same model, data and
config, so `resume=True` redoes it and continues the recovery from its checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from condense.data.loader import as_source, example_inputs
from condense.data.views import subset
from condense.evaluate import evaluate
from condense.evaluate.counts import count_macs, count_parameters
from condense.evaluate.embedding import cosine_rows
from condense.evaluate.metrics import predict
from condense.models.hf import is_encoder
from condense.train.recover import (
    RecoverConfig,
    check_recovery_data,
    recalibrate_batchnorm,
    recover,
    recover_config,
    recovery_teacher,
)


def validation_metric(model: nn.Module, data: Any, samples: int | None = None) -> Callable[[nn.Module], float] | None:
    """A function scoring a model on (the first `samples` of) `data`: accuracy, or for an encoder
    (no class scores) the mean cosine of its output vectors (sentence embeddings, or per-token hidden
    states) to `model`'s, computed once now. None when
    there is no data or it has no labels (and `model` is not an encoder)."""
    if data is None or len(as_source(data)) == 0:
        return None
    n = len(as_source(data))
    if samples is not None and samples < n:
        data = subset(data, list(range(samples)))
    if is_encoder(model):  # per-vector cosine: a sentence embedding each, or each token's hidden state
        def rows(m: nn.Module) -> Any:
            out = predict(m, data)[0]
            return out.reshape(-1, out.shape[-1])

        ref = rows(model)
        return lambda m: float(cosine_rows(rows(m), ref).mean())
    if as_source(data).labelled is False:
        return None
    return lambda m: float(evaluate(m, data)["accuracy"])


def size_numbers(model: nn.Module, example: Any) -> dict[str, Any]:
    """`params` (a masked layer's weight counted once) and `macs` (on `example`, one batch) of `model`."""
    return {"params": count_parameters(model)["params"], "macs": count_macs(model, example)}


def edit_and_recover(
    model: nn.Module,
    edit: Callable[[nn.Module], nn.Module],
    recover_config_: RecoverConfig | dict[str, Any] | None,
    train_data: Any,
    val_data: Any | None = None,
    *,
    teacher: nn.Module | None = None,
    resume: bool = False,
    recover_data: Any | None = None,
    example: Any = None,
    numbers: Callable[[nn.Module, Any], dict[str, Any]] = size_numbers,
    after_recovery: Callable[[nn.Module, dict[str, Any]], None] | None = None,
    val_samples: int = 2048,
    report: Callable[[nn.Module], Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Edit `model` with `edit` and recover it (module docstring); return `(model, info)`.

    `recover_data` (default `train_data`) is what the recovery trains on, e.g. labelled plus
    unlabelled images for a label-free distillation recovery; BatchNorm recalibration reads
    `train_data`. `example` (default: one sample of the training data) is what MACs are counted
    on; `numbers(model, example)` may add the method's own sizes (pruning adds sparsity).
    `report(model)` returns the edit's own report (kept in `info["edit"]`).
    """
    rcfg = recover_config(recover_config_)
    check_recovery_data(rcfg, train_data)
    if example is None:
        example = example_inputs(train_data if train_data is not None else val_data, 1)
    teacher = recovery_teacher(model, rcfg, teacher)
    metric = validation_metric(model, val_data, val_samples)
    info: dict[str, Any] = {"recover": rcfg.to_dict(), "before": numbers(model, example), "val": {},
                            "metric": "mean cosine to the unedited model" if is_encoder(model) else "accuracy"}

    def score(key: str, m: nn.Module) -> None:
        info["val"][key] = metric(m) if metric is not None else None

    score("before", model)
    model = edit(model)
    if report is not None:
        info["edit"] = report(model)
    info["edited"] = numbers(model, example)
    score("edited", model)
    if rcfg.bn_batches and train_data is not None:
        seen = recalibrate_batchnorm(model, train_data, rcfg.bn_batches, rcfg.train.batch_size, rcfg.train.seed)
        info["bn_recalibration_samples"] = seen
        if seen:
            score("edited_bn_recalibrated", model)
    model, fit_info = recover(model, rcfg, train_data if recover_data is None else recover_data, val_data,
                              teacher=teacher, resume=resume)
    if fit_info is not None:
        info["fit"] = fit_info
    if after_recovery is not None:
        after_recovery(model, info)
    info["recovered"] = numbers(model, example)
    score("recovered", model)
    info["params_fraction"] = info["recovered"]["params"] / max(info["before"]["params"], 1)
    info["macs_fraction"] = info["recovered"]["macs"] / max(info["before"]["macs"], 1)
    return model, info
