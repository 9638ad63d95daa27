"""The generic stage runner: a recipe stage becomes a `condense.core.method.Job` for the record its
kind names (`METHODS`), and the record's `apply` does the work.

What is the same for every kind lives here, once: building the stage's model from `model:`, the
training settings (`train:` over the method's defaults, checkpointed in the stage folder), the
recovery of a structural edit (`recover:`), and the int8-or-fp32 deployment decision (a record
with `deploys="auto"` whose result is int8 gets the int8 ONNX file ONNX Runtime runs). A new
stage kind is one file in its method package that registers a `Method`; nothing here changes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.config import Config
from condense.core.method import METHODS, Job, Method, jsonable
from condense.core.method import Outcome as StageOutput
from condense.data.base import Splits
from condense.data.loader import example_inputs, heldout_inputs
from condense.data.transfer import all_training_images
from condense.export.formats import deploy_precision
from condense.models.hf import student_from_teacher
from condense.models.registry import build_model
from condense.quantize import export_int8_onnx
from condense.recipes.schema import Recipe, StageSpec
from condense.train.config import TrainConfig
from condense.train.distributed import is_main
from condense.train.recover import RecoverConfig

PLANNED: dict[str, str] = {}  # kind -> why it is not available yet (none at present)

#: `model: {name: teacher, kwargs: {layers: 3}}` in a distill stage: the student is a copy of
#: the stage's (Hugging Face) teacher keeping these blocks (`student_from_teacher`)
FROM_TEACHER = "teacher"

__all__ = ["FROM_TEACHER", "PLANNED", "STAGES", "StageContext", "StageOutput", "all_training_images",
           "build_stage_model", "model_kwargs_for", "run_stage"]


#: the stage kinds a recipe may name: the `Method` records, filled by their packages on first lookup
STAGES = METHODS


@dataclasses.dataclass
class StageContext:
    recipe: Recipe
    spec: StageSpec
    index: int
    folder: Path
    splits: Splits
    model: nn.Module | None  # the input model (a copy the stage may change)
    teachers: list[nn.Module]
    resume: bool


def _train_config(ctx: StageContext, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """The stage's `train:` over `defaults` (the method's own, e.g. distillation's) and TrainConfig's."""
    raw = {"seed": ctx.recipe.seed + ctx.index, "progress": "log", **(defaults or {}), **ctx.spec.train}
    raw["checkpoint_dir"] = str(ctx.folder / "checkpoint")
    return TrainConfig.from_dict(raw, where=f"{ctx.recipe.path} stage {ctx.spec.name!r} train")


def _recover_config(ctx: StageContext) -> RecoverConfig:
    """The stage's `recover:` (method "none" when absent), training in the stage's checkpoint folder."""
    raw = {"method": "none", **ctx.spec.recover}
    if raw["method"] != "none":
        raw["train"] = _train_config(ctx).to_dict()
    return RecoverConfig.from_dict(raw, where=f"{ctx.recipe.path} stage {ctx.spec.name!r} recover")


def model_kwargs_for(splits: Splits, kwargs: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Fill input/class shape arguments of a zoo model from the data (explicit kwargs win).

    A model named `package.module:factory` or `hf:<folder>` takes only the kwargs given."""
    if name is not None and ":" in name:
        return dict(kwargs)
    if len(splits.input_shape) == 1:
        base = {"in_features": splits.input_shape[0], "num_classes": splits.num_classes}
    else:
        base = {"in_channels": splits.input_shape[0], "image_size": splits.input_shape[-1], "num_classes": splits.num_classes}
    return {**base, **kwargs}


def build_stage_model(ctx: StageContext) -> nn.Module:
    """The model a stage's `model:` section names (seeded by the recipe seed and the stage index)."""
    spec = ctx.spec.model or {}
    torch.manual_seed(ctx.recipe.seed + 1000 * (ctx.index + 1))
    name = spec["name"]
    kwargs = dict(spec.get("kwargs") or {})
    if name == FROM_TEACHER:
        return student_from_teacher(ctx.teachers[0], kwargs["layers"])
    return build_model(name, **model_kwargs_for(ctx.splits, kwargs, name))


def job_for(ctx: StageContext, cfg: Config, record: Method) -> Job:
    """The `Job` a stage hands its method: the model (`model:` built, else the input), the
    training settings, the recovery (for a structural edit) and where errors point."""
    where = f"{ctx.recipe.path}:{ctx.spec.line}: stage {ctx.spec.name!r} ({ctx.spec.kind})"
    model = build_stage_model(ctx) if (ctx.spec.model is not None and record.takes_model) else ctx.model
    return Job(model=model, config=cfg, splits=ctx.splits, folder=ctx.folder,
               train=lambda defaults=None: _train_config(ctx, defaults), teachers=list(ctx.teachers),
               recover=_recover_config(ctx) if record.edits_structure else None, resume=ctx.resume,
               train_section=dict(ctx.spec.train), where=where)


def run_stage(ctx: StageContext, cfg: Config) -> StageOutput:
    """Run stage `ctx` with its parsed config `cfg` through its kind's record; deploy int8 where
    the record says so and the result is int8 (the one int8-or-fp32 decision)."""
    record = STAGES.get(ctx.spec.kind)
    job = job_for(ctx, cfg, record)
    out = record.apply(job)
    # (an int8 stage's torch latency is the simulation's: `measure_model` keeps it out of the row's latency)
    if record.deploys == "auto" and out.model is not None and deploy_precision(out.model) == "int8" and is_main():
        res = export_int8_onnx(out.model, example_inputs(ctx.splits.test, 1), ctx.folder / "model.int8.onnx",
                               heldout=heldout_inputs(ctx.splits.test), reference=job.model)
        out.deployed_onnx = Path(res.path)
        out.info["int8_export"] = jsonable(res.to_dict())
        out.notes.extend(res.notes)
    return out
