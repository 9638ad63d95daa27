"""The verbs: `pretrain` (self-supervised) and `ssl_distill` (label-free embedding distillation).

Both take *unlabelled* data and read nothing but the inputs: the data is re-wrapped as a
label-free `ArrayDataset` (or a batch source whose batches have no `target`) before the one
`fit()` loop sees it, so no code path below can touch a label. Labelled data is refused with a clear error (pass
`data.without_labels()` to pretrain on labelled images too), which keeps "no labels used" a
property of the call rather than a promise.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset
from condense.data.loader import as_source, example_inputs, without_labels
from condense.ssl.config import PretrainConfig, SSLDistillConfig
from condense.ssl.tasks import METHODS, SSLDistillTask, SSLTask
from condense.train.callbacks import Callback
from condense.train.fit import FitResult, fit
from condense.train.task import frozen_while_teaching


def as_unlabelled(data: Any, where: str) -> Any:
    """`data` as label-free data: an `ArrayDataset` without targets, or a batch source whose
    batches carry no `target` field.

    Accepts an unlabelled `ArrayDataset` (or a plain tensor of inputs), or any torch Dataset /
    DataLoader whose samples carry no labels. Labelled data is a ConfigError: pass
    `data.without_labels()` (ArrayDataset) or `condense.data.loader.without_labels(data)`.
    """
    if isinstance(data, torch.Tensor) or hasattr(data, "inputs"):
        return _unlabelled_arrays(data, where)
    source = as_source(data)
    if source.labelled:
        raise ConfigError(
            f"{where} learns from unlabelled data, but this dataset carries labels; pass "
            "`condense.data.loader.without_labels(data)` to use its inputs without their labels"
        )
    if len(source) < 2:
        raise ConfigError(f"{where}: needs at least 2 samples, got {len(source)}")
    return without_labels(source)


def _unlabelled_arrays(data: Any, where: str) -> ArrayDataset:
    if isinstance(data, torch.Tensor):
        inputs, indices = data, None
    else:
        if getattr(data, "labelled", False):
            raise ConfigError(
                f"{where} learns from unlabelled data, but this dataset carries labels; pass "
                "`data.without_labels()` (e.g. `splits.train.without_labels()`) to use its images "
                "without their labels, or the `unlabelled` split"
            )
        inputs, indices = data.inputs, getattr(data, "indices", None)
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise ConfigError(f"{where}: inputs must be a floating-point tensor, got {type(inputs).__name__}")
    if len(inputs) < 2:
        raise ConfigError(f"{where}: needs at least 2 samples, got {len(inputs)}")
    if indices is None:
        indices = torch.arange(len(inputs))
    return ArrayDataset(inputs, None, torch.as_tensor(indices))


def _check_batches(n: int, config_train: Any, where: str) -> None:
    bs = config_train.batch_size
    if bs < 2:
        raise ConfigError(f"{where}: train.batch_size must be >= 2 (a self-supervised batch needs other samples)")
    if not config_train.drop_last and n > bs and n % bs == 1:
        raise ConfigError(
            f"{where}: {n} samples in batches of {bs} leave a last batch of 1 (BatchNorm cannot train on it); "
            "set train.drop_last: true or change batch_size"
        )


def _sample(data: Any, n: int, where: str) -> torch.Tensor:
    """The first `n` inputs (the augmentations and heads are shaped from them)."""
    x = example_inputs(data, min(len(as_source(data)), n))
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ConfigError(f"{where}: self-supervised methods augment image / feature tensors in the 'input' field; "
                          f"these batches have {sorted(x) if isinstance(x, dict) else type(x).__name__}")
    return x


def build_pretrain_task(model: nn.Module, unlabelled_data: Any, config: PretrainConfig) -> tuple[SSLTask, Any]:
    """The task `pretrain` runs, and the label-free data it runs on."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"pretrain(): model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, PretrainConfig):
        raise ConfigError(f"pretrain(): config must be a PretrainConfig, got {type(config).__name__}")
    data = as_unlabelled(unlabelled_data, "pretrain()")
    _check_batches(len(data), config.train, "pretrain()")
    sample = _sample(data, config.train.batch_size, "pretrain()")
    task = METHODS.get(config.method).build(model, config, sample)
    return task, data


def pretrain_fit(
    model: nn.Module,
    unlabelled_data: Any,
    config: PretrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> FitResult:
    """Like `pretrain`, but return the whole FitResult (history with `train_loss` per epoch)."""
    config = config or PretrainConfig()
    task, data = build_pretrain_task(model, unlabelled_data, config)
    try:
        return fit(task, data, config.train, None, [*task.callbacks(), *callbacks], resume=resume)
    finally:
        task.close()


def pretrain(
    model: nn.Module,
    unlabelled_data: Any,
    config: PretrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> nn.Module:
    """Pretrain `model`'s encoder self-supervised on `unlabelled_data`; return the model.

    The embedding is the output of `config.layer` (default "flatten", the classifier's input).
    Heads (projector, predictor, decoder) and EMA targets are trained or updated alongside and
    dropped; the classifier itself is untouched, so fine-tune it on labelled data next.
    """
    return pretrain_fit(model, unlabelled_data, config, callbacks=callbacks, resume=resume).model


def ssl_distill_fit(
    student: nn.Module,
    teacher: nn.Module,
    unlabelled_data: Any,
    config: SSLDistillConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> FitResult:
    """Like `ssl_distill`, but return the whole FitResult."""
    config = config or SSLDistillConfig()
    if not isinstance(config, SSLDistillConfig):
        raise ConfigError(f"ssl_distill(): config must be an SSLDistillConfig, got {type(config).__name__}")
    if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
        raise ConfigError("ssl_distill(): student and teacher must be torch.nn.Modules")
    data = as_unlabelled(unlabelled_data, "ssl_distill()")
    _check_batches(len(data), config.train, "ssl_distill()")
    with frozen_while_teaching([teacher]):
        task = SSLDistillTask.build(student, teacher, config, _sample(data, config.train.batch_size, "ssl_distill()"))
        try:
            return fit(task, data, config.train, None, [*task.callbacks(), *callbacks], resume=resume)
        finally:
            task.close()


def ssl_distill(
    student: nn.Module,
    teacher: nn.Module,
    unlabelled_data: Any,
    config: SSLDistillConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> nn.Module:
    """Teach `student` the frozen `teacher`'s embedding on unlabelled data; return the student.

    Loss: `embed_weight * (cosine | mse)(adapter(s), t) + seed_weight * SEED(adapter(s), t)` where
    `s`, `t` are the embeddings at `student_layer` / `teacher_layer` and the adapter comes from
    `condense.distill.adapters.make_projector`. No label is read. The student's classifier is
    untouched: fine-tune it (or distill logits) next.
    """
    return ssl_distill_fit(student, teacher, unlabelled_data, config, callbacks=callbacks, resume=resume).model
