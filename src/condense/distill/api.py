"""The distillation verbs (`distill`, `distill_fit`, `build_task`, `born_again`), re-exported by
`condense.distill`; a module of its own so that `datafree` can call `distill` without importing
the package that lazily re-exports `datafree`."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.data.loader import as_source
from condense.distill.cache import TeacherCache
from condense.distill.config import DistillConfig
from condense.distill.defaults import default_losses, output_kind
from condense.distill.losses import build_losses
from condense.distill.task import DistillTask
from condense.export.onnx import output_tensor
from condense.models.registry import model_spec
from condense.models.signature import batch_to, call_model, slice_batch
from condense.train.callbacks import Callback
from condense.train.fit import FitResult, choose_device, fit
from condense.train.task import frozen_while_teaching

logger = logging.getLogger(__name__)


def _as_list(teachers: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(teachers, nn.Module):
        return [teachers]
    teachers = list(teachers)
    if not teachers:
        raise ConfigError("distill(): the teacher list is empty; give at least one teacher")
    if not all(isinstance(t, nn.Module) for t in teachers):
        raise ConfigError("distill(): every teacher must be a torch.nn.Module")
    return teachers


def build_task(
    student: nn.Module,
    teachers: nn.Module | Sequence[nn.Module],
    train_data: Any,
    config: DistillConfig,
) -> DistillTask:
    """Validate the setting, build the losses and (when views are fixed) the teacher cache."""
    teachers = _as_list(teachers)
    source = as_source(train_data)
    if len(source) == 0:
        raise ConfigError("distill(): the training data is empty")
    if config.feature_teacher >= len(teachers):
        raise ConfigError(f"feature_teacher={config.feature_teacher} but only {len(teachers)} teacher(s) given")
    first = source.head(min(len(source), config.train.batch_size))
    device = choose_device(config.train.device)
    for t in teachers:
        t.eval().to(device)  # where fit() will run them; the cache is computed there too
    student.to(device)
    first_here = batch_to(first, device)
    specs, defaults = _loss_specs(teachers[0], first_here, config)
    losses = build_losses(specs)
    losses.bind(student, teachers[config.feature_teacher])  # before the cache asks for feature_layers()
    if "targets" in losses.needs and "target" not in first:
        raise ConfigError(
            "distill(): the losses use ground-truth labels (ce / dkd) but the training data is unlabelled; "
            "set alpha: 1 for label-free distillation"
        )
    if config.mixup and "targets" in losses.needs:
        raise ConfigError("distill(): mixup is for label-free function matching; drop the label losses (alpha: 1)")
    if config.cache == "on" and config.views_vary:
        raise ConfigError("distill(): cache='on' but augmentation/mixup change the teacher's inputs every epoch")
    cache = None
    # next-token logits (B, T, V) are too big to keep for a whole data set: "auto" computes them live
    big = defaults is not None and defaults["output_kind"] == "token_logits" and config.cache == "auto"
    if (config.cache != "off" and not big and not config.views_vary
            and ("logits" in losses.needs or losses.feature_layers()[1])):
        folder = config.cache_dir
        if folder is None and config.train.checkpoint_dir:
            folder = str(Path(config.train.checkpoint_dir) / "teacher_cache")
        cache = TeacherCache.build(
            teachers, source, losses.feature_layers()[1], config.feature_teacher,
            folder=folder, device=device,
        )
    task = DistillTask(student, teachers, losses, config, cache)
    task.defaults = defaults
    task.check_shapes(first_here)
    task.materialize(first_here)  # also runs every loss once on this batch: shape errors before training
    return task


def _loss_specs(teacher: nn.Module, batch: dict[str, Any], config: DistillConfig
                ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The config's losses; when it names none, the defaults for the teacher's output kind
    (`condense.distill.defaults.default_losses`), and what was picked and why (None: given)."""
    if config.losses:
        return config.loss_specs(), None
    x = slice_batch(batch, 2)
    with torch.no_grad():
        out = output_tensor(call_model(teacher, x))
    kind = output_kind(teacher, out, x)
    specs, why = default_losses(kind, config, out, x)
    if kind in ("class_logits", "other"):
        return specs, None  # the classic mix, as always: nothing new to report
    logger.info("distill: no losses given; %s -> %s", why, [s["name"] for s in specs])
    return specs, {"output_kind": kind, "losses": [dict(s) for s in specs], "why": why}


def distill_fit(
    student: nn.Module,
    teachers: nn.Module | Sequence[nn.Module],
    train_data: Any,
    config: DistillConfig | None = None,
    val_data: Any | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> FitResult:
    """Like `distill`, but return the whole FitResult (history, best epoch)."""
    config = config or DistillConfig()
    teachers = _as_list(teachers)
    with frozen_while_teaching(teachers):
        task = build_task(student, teachers, train_data, config)
        try:
            result = fit(task, train_data, config.train, val_data, callbacks, resume=resume)
        finally:
            task.close()
    if task.defaults is not None:
        result.info["distill_defaults"] = task.defaults
    return result


def distill(
    student: nn.Module,
    teachers: nn.Module | Sequence[nn.Module],
    train_data: Any,
    config: DistillConfig | None = None,
    val_data: Any | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> nn.Module:
    """Train `student` to imitate `teachers` (one module or a list); return the student.

    Teachers stay frozen in eval mode; only the student and the losses' adapters are trained.
    The best weights are chosen on `val_data` (labelled) when given.
    """
    return distill_fit(student, teachers, train_data, config, val_data, callbacks=callbacks, resume=resume).model


def born_again(
    model: nn.Module,
    train_data: Any,
    config: DistillConfig | None = None,
    val_data: Any | None = None,
    *,
    generations: int = 2,
) -> list[nn.Module]:
    """Born-again networks (Furlanello et al. 2018): each generation, a freshly initialised copy of
    the same architecture is distilled from the previous generation. Returns every generation."""
    spec = model_spec(model)
    if spec is None:
        raise ConfigError("born_again(): the model needs an architecture spec (build it with build_model)")
    if generations < 1:
        raise ConfigError(f"born_again(): generations must be >= 1, got {generations}")
    out, teacher = [], model
    for g in range(generations):
        torch.manual_seed((config or DistillConfig()).train.seed + 7919 * (g + 1))
        student = spec.build()
        teacher = distill(student, teacher, train_data, config, val_data)
        out.append(teacher)
    return out
