"""Stage kinds: each is a config check plus a handler that turns input models into an output model.

A kind whose method is not built yet is listed in `PLANNED` and rejected with a clear message.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.core.registry import Registry
from condense.data.augment import AugmentConfig, build_augment
from condense.data.base import Splits
from condense.data.loader import example_inputs, heldout_inputs
from condense.export.formats import FORMATS as FORMATS_SUFFIX
from condense.models.registry import build_model
from condense.recipes.schema import Recipe, StageSpec
from condense.train.config import TrainConfig
from condense.train.distributed import is_main, world

PLANNED: dict[str, str] = {}  # kind -> why it is not available yet (none at present)

#: stage kinds that edit a model's structure and take a `recover:` section
RECOVERING = ("prune", "factorize", "reduce-depth")


@dataclasses.dataclass
class TrainStageConfig(Config):
    """`train` / `finetune` stage options besides the TrainConfig under `train:`."""

    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


@dataclasses.dataclass
class ExportStageConfig(Config):
    """`export` stage: its input in each of `formats` (onnx, pt2, executorch, tflite), parity-checked
    in the format's runtime and timed at batch 1; int8 when the input is quantized (precision auto)."""

    opset: int = 18
    atol: float = 1e-4
    formats: list[str] = dataclasses.field(default_factory=lambda: ["onnx"])
    precision: str = "auto"
    calibration_samples: int = 128

    def validate(self) -> None:
        from condense.export.formats import PRECISIONS, check_format

        if not self.formats:
            raise ConfigError("export.formats must name at least one format")
        for f in self.formats:
            check_format(f)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"export.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclasses.dataclass
class EmptyConfig(Config):
    """A stage kind with no options."""


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


@dataclasses.dataclass
class StageOutput:
    model: nn.Module | None
    deployed_onnx: Path | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    splits: Splits | None = None  # data for the later stages (a reduce-data stage changes it)


@dataclasses.dataclass
class StageKind:
    parse: Callable[[dict[str, Any]], Config]  # the stage's `config:` mapping -> the verb's config object
    handler: Callable[[StageContext, Config], StageOutput]
    trains: bool = False  # has a `train:` section (TrainConfig), checkpointed and resumable
    needs_input: bool = True
    measured: bool = True  # False: the stage changes data, not a model (no measured row)
    trains_when: Callable[[Config], bool] | None = None  # per-config answer (quantize trains for qat only)

    def trains_for(self, cfg: Config) -> bool:
        """Whether a stage of this kind with config `cfg` trains (takes `train:`, runs on every rank)."""
        return self.trains if self.trains_when is None else self.trains_when(cfg)


STAGES: Registry[StageKind] = Registry("stage kind")


def _train_config(ctx: StageContext, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """The stage's `train:` over `defaults` (the method's own, e.g. distillation's) and TrainConfig's."""
    raw = {"seed": ctx.recipe.seed + ctx.index, "progress": "log", **(defaults or {}), **ctx.spec.train}
    raw["checkpoint_dir"] = str(ctx.folder / "checkpoint")
    return TrainConfig.from_dict(raw, where=f"{ctx.recipe.path} stage {ctx.spec.name!r} train")


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


#: `model: {name: teacher, kwargs: {layers: 3}}` in a distill stage: the student is a copy of
#: the stage's (Hugging Face) teacher keeping these blocks (`student_from_teacher`)
FROM_TEACHER = "teacher"


def build_stage_model(ctx: StageContext) -> nn.Module:
    spec = ctx.spec.model or {}
    torch.manual_seed(ctx.recipe.seed + 1000 * (ctx.index + 1))
    name = spec["name"]
    kwargs = dict(spec.get("kwargs") or {})
    if name == FROM_TEACHER:
        from condense.models.hf import student_from_teacher

        return student_from_teacher(ctx.teachers[0], kwargs["layers"])
    return build_model(name, **model_kwargs_for(ctx.splits, kwargs, name))


def _input(ctx: StageContext) -> nn.Module:
    if ctx.model is None:
        raise ConfigError(f"{ctx.recipe.path}:{ctx.spec.line}: stage {ctx.spec.name!r} ({ctx.spec.kind}) needs an input model; "
                          "give it 'model:' or 'from: <stage>'")
    return ctx.model


def run_train(ctx: StageContext, cfg: TrainStageConfig) -> StageOutput:
    from condense.train.fit import train_model

    model = build_stage_model(ctx) if ctx.spec.model is not None else _input(ctx)
    tc = _train_config(ctx)
    res = train_model(model, ctx.splits.train, tc, ctx.splits.val, augment=build_augment(cfg.augment), resume=ctx.resume)
    return StageOutput(res.model, info={"fit": res.to_dict(), "train_config": tc.to_dict()})


def _label_free_transfer(ctx: StageContext, dc: Any, what: str = "distillation") -> tuple[Any, list[str]]:
    """All training images (labelled + unlabelled, labels dropped) when the distillation `dc`
    needs no labels and the data has an unlabelled part; else (None, [])."""
    from condense.distill.losses import build_losses

    if ctx.splits.unlabelled is None or "targets" in build_losses(dc.loss_specs()).needs:
        return None, []
    transfer = all_training_images(ctx.splits)
    return transfer, [f"label-free {what}: the transfer set is all {len(transfer)} training images "
                      f"({len(ctx.splits.train)} labelled + {len(ctx.splits.unlabelled)} unlabelled)"]


def run_distill(ctx: StageContext, cfg: Config) -> StageOutput:
    from condense.distill import distill_fit, teacher_defaults
    from condense.distill.config import DISTILL_TRAIN

    if not ctx.teachers:
        raise ConfigError(f"{ctx.recipe.path}:{ctx.spec.line}: distill stage {ctx.spec.name!r} needs 'teacher: <stage name>'")
    student = build_stage_model(ctx) if ctx.spec.model is not None else _input(ctx)
    defaults = {**DISTILL_TRAIN, **teacher_defaults({}, ctx.teachers[0]).get("train", {})}  # as `condense distill`
    dc = cfg.replace(train=_train_config(ctx, defaults).to_dict())
    transfer, notes = _label_free_transfer(ctx, dc)
    res = distill_fit(student, ctx.teachers, ctx.splits.train if transfer is None else transfer, dc, ctx.splits.val,
                      resume=ctx.resume)
    return StageOutput(res.model, info={"fit": res.to_dict(), "distill_config": dc.to_dict()}, notes=notes)


def _recovery_transfer(ctx: StageContext, rc: Any) -> tuple[Any, list[str]]:
    """What a distillation recovery trains on: all training images when it needs no labels."""
    if rc.method != "distill":
        return None, []
    return _label_free_transfer(ctx, rc.distill_config(_input(ctx)), "recovery")


def run_prune(ctx: StageContext, cfg: Config) -> StageOutput:
    from condense.prune import make_permanent, pruning_report
    from condense.prune.recover import prune_and_recover

    model = _input(ctx)
    example = example_inputs(ctx.splits.test, 1)
    rc = _stage_recover_config(ctx)
    transfer, notes = _recovery_transfer(ctx, rc)
    pruned, info = prune_and_recover(model, cfg, rc, ctx.splits.train, ctx.splits.val, example_inputs=example,
                                     resume=ctx.resume, recover_data=transfer)
    make_permanent(pruned)
    out = StageOutput(pruned, info={"prune": _jsonable(info)}, notes=notes)
    if is_main():  # the report times the model: one process, not every torchrun rank at once
        out.info["report"] = _jsonable(pruning_report(pruned, example))
    return out


def _stage_recover_config(ctx: StageContext) -> Any:
    from condense.train.recover import RecoverConfig

    raw = {"method": "none", **ctx.spec.recover}
    if raw["method"] != "none":
        raw["train"] = _train_config(ctx).to_dict()
    return RecoverConfig.from_dict(raw, where=f"{ctx.recipe.path} stage {ctx.spec.name!r} recover")


def run_factorize(ctx: StageContext, cfg: Config) -> StageOutput:
    from condense.lowrank import factorize_and_recover

    rc = _stage_recover_config(ctx)
    transfer, notes = _recovery_transfer(ctx, rc)
    model, info = factorize_and_recover(_input(ctx), cfg, rc, ctx.splits.train, ctx.splits.val,
                                        resume=ctx.resume, recover_data=transfer)
    edit = info.get("edit") or {}
    notes += [f"{name}: {why}" for name, why in (edit.get("skipped") or {}).items()]
    return StageOutput(model, info={"factorize": _jsonable(info)}, notes=notes)


def run_reduce_depth(ctx: StageContext, cfg: Config) -> StageOutput:
    from condense.lowrank import reduce_depth_and_recover

    rc = _stage_recover_config(ctx)
    transfer, notes = _recovery_transfer(ctx, rc)
    model, info = reduce_depth_and_recover(_input(ctx), cfg, rc, ctx.splits.train, ctx.splits.val,
                                           resume=ctx.resume, recover_data=transfer)
    dropped = (info.get("edit") or {}).get("dropped") or []
    return StageOutput(model, info={"reduce_depth": _jsonable(info)}, notes=[f"removed blocks: {', '.join(dropped)}", *notes])


def run_quantize(ctx: StageContext, cfg: Config) -> StageOutput:
    """Quantize the input model; `method: qat` trains it first (`qat_fit`, the stage's `train:`).
    A model that comes out int8 (`deploy_precision`) is written as the int8 ONNX file ONNX Runtime
    runs; the others (weight-only, dynamic) are measured as their float export."""
    from condense.export import deploy_precision
    from condense.quantize import quantize

    model = _input(ctx)
    info: dict[str, Any] = {"quantize_config": cfg.to_dict()}
    if _quant_method(cfg) == "qat":
        from condense.quantize.qat_fit import qat_fit

        res = qat_fit(model, ctx.splits.train, cfg, _train_config(ctx), ctx.splits.val,
                      example=example_inputs(ctx.splits.test, 1), resume=ctx.resume)
        qmodel = res.model
        info["qat"] = _jsonable(res.to_dict())
    else:
        qmodel = quantize(model, cfg, calibration=ctx.splits.train)
    out = StageOutput(qmodel, info=info)
    # (an int8 stage's torch latency is the simulation's: `measure_model` keeps it out of the row's latency)
    if deploy_precision(qmodel) == "int8" and is_main():  # the one int8-or-fp32 decision (export, tune too)
        from condense.quantize import export_int8_onnx

        res8 = export_int8_onnx(qmodel, example_inputs(ctx.splits.test, 1), ctx.folder / "model.int8.onnx",
                                heldout=heldout_inputs(ctx.splits.test), reference=model)
        out.deployed_onnx = Path(res8.path)
        out.info["int8_export"] = _jsonable(res8.to_dict())
        out.notes.extend(res8.notes)
    report = getattr(qmodel, "condense_quant_report", None)
    if report is not None:
        out.info["quant_report"] = _jsonable(report.to_dict() if hasattr(report, "to_dict") else report)
    return out


def run_export(ctx: StageContext, cfg: ExportStageConfig) -> StageOutput:
    from condense.export import deploy_precision, export, export_onnx
    from condense.quantize import export_int8_onnx

    model = _input(ctx)
    example = example_inputs(ctx.splits.test, 1)
    out = StageOutput(model)
    # the measured row always has the ONNX file ONNX Runtime runs, whatever else is deployed
    if deploy_precision(model, cfg.precision) == "int8":
        res = export_int8_onnx(model, example, ctx.folder / "model.int8.onnx",
                               heldout=heldout_inputs(ctx.splits.test), opset=cfg.opset)
        out.notes.extend(res.notes)
    else:
        res = export_onnx(model, example, ctx.folder / "model.onnx", opset=cfg.opset, atol=cfg.atol)
    out.deployed_onnx = Path(res.path)
    out.info["export"] = _jsonable(res.to_dict())
    deployed = []
    for fmt in cfg.formats:
        if fmt == "onnx":
            continue
        r = export(model, example, ctx.folder / f"model{FORMATS_SUFFIX[fmt]}", fmt, precision=cfg.precision,
                   calibration=ctx.splits.train, samples=ctx.splits.test, atol=cfg.atol,
                   calibration_samples=cfg.calibration_samples)
        deployed.append(_jsonable(r.to_dict()))
        out.notes.extend(r.notes)
    out.info["deployed"] = deployed
    return out


def run_tune(ctx: StageContext, cfg: Config) -> StageOutput:
    from condense.export import deploy_precision
    from condense.quantize import export_int8_onnx
    from condense.tune import tune

    if world().distributed:
        raise ConfigError(f"{ctx.recipe.path}:{ctx.spec.line}: tune stage {ctx.spec.name!r}: tune times every trial's "
                          "latency, which processes running side by side would distort; run it without torchrun")
    cfg = cfg.replace(train={**cfg.train.to_dict(), **ctx.spec.train}) if ctx.spec.train else cfg
    result = tune(_input(ctx), ctx.splits, cfg)
    out = StageOutput(result.model, info={"tune": _jsonable(result.to_dict())}, notes=[result.message])
    if deploy_precision(result.model) == "int8":  # the one int8-or-fp32 decision
        res = export_int8_onnx(result.model, example_inputs(ctx.splits.test, 1), ctx.folder / "model.int8.onnx",
                               heldout=heldout_inputs(ctx.splits.test))
        out.deployed_onnx = Path(res.path)
    return out


def all_training_images(splits: Splits) -> Any:
    """Every training sample without labels: the labelled split plus the unlabelled part."""
    from condense.data.loader import without_labels
    from condense.data.views import concat

    parts = [splits.train] + ([splits.unlabelled] if splits.unlabelled is not None else [])
    return without_labels(concat(parts))


def run_pretrain(ctx: StageContext, cfg: Config) -> StageOutput:
    from condense.ssl import pretrain_fit

    model = build_stage_model(ctx) if ctx.spec.model is not None else _input(ctx)
    pc = cfg.replace(train=_train_config(ctx).to_dict())
    res = pretrain_fit(model, all_training_images(ctx.splits), pc, resume=ctx.resume)
    return StageOutput(res.model, info={"fit": res.to_dict(), "pretrain_config": pc.to_dict()},
                       notes=["self-supervised pretraining trains the encoder only; the classifier is untrained "
                              "until a finetune stage, so this stage's accuracy is not meaningful"])


def run_reduce(ctx: StageContext, cfg: Config) -> StageOutput:
    """Reduce the data the later stages see: PCA / feature selection of inputs, or a coreset of the
    training split (on the input model's embeddings when the stage has `from:`)."""
    from condense.reduce import reduce_data

    result = reduce_data(ctx.splits, cfg, model=ctx.model)
    info = {"method": result.method, **_jsonable(result.info)}
    if result.positions is not None:
        info["positions"] = [int(p) for p in result.positions]
    # every torchrun process applies the reduction; rank 0 writes its file
    if result.transform is not None and hasattr(result.transform, "save") and is_main():
        result.transform.save(ctx.folder / "transform.json")
    return StageOutput(ctx.model, info=info, splits=result.data)


def run_evaluate(ctx: StageContext, cfg: EmptyConfig) -> StageOutput:
    """Measure a model as it is: the input stage's, or one built from `model:` (e.g. `hf:<folder>`,
    a pretrained teacher that later stages compress)."""
    return StageOutput(build_stage_model(ctx) if ctx.spec.model is not None else _input(ctx))


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


def _config_of(module: str, name: str) -> Callable[[dict[str, Any]], Config]:
    """A stage's config parser: `module.name.from_dict`, imported when a recipe uses the kind."""
    return lambda raw: getattr(importlib.import_module(module), name).from_dict(raw)


def _resolved_config_of(module: str) -> Callable[[dict[str, Any]], Config]:
    """`module.resolve_config(raw)`: the method named in the config picks its own dataclass."""
    return lambda raw: importlib.import_module(module).resolve_config(raw)[1]


def _quant_method(cfg: Config) -> str:
    from condense.quantize import resolve_config

    return resolve_config(cfg)[0]


def _quant_trains(cfg: Config) -> bool:
    """Whether the quantization method's record says its result trains (QAT) before it deploys."""
    from condense.quantize import QUANTIZERS

    return QUANTIZERS.get(_quant_method(cfg)).trains


STAGES.register("train", StageKind(TrainStageConfig.from_dict, run_train, trains=True, needs_input=False))
STAGES.register("finetune", StageKind(TrainStageConfig.from_dict, run_train, trains=True))
STAGES.register("distill", StageKind(_config_of("condense.distill.config", "DistillConfig"), run_distill, trains=True, needs_input=False))
STAGES.register("prune", StageKind(_config_of("condense.prune", "PruneConfig"), run_prune, trains=True))
STAGES.register("factorize", StageKind(_config_of("condense.lowrank", "FactorizeConfig"), run_factorize, trains=True))
STAGES.register("reduce-depth", StageKind(_config_of("condense.lowrank", "DepthConfig"), run_reduce_depth, trains=True))
STAGES.register("quantize", StageKind(_resolved_config_of("condense.quantize"), run_quantize,
                                       trains_when=_quant_trains))
STAGES.register("export", StageKind(ExportStageConfig.from_dict, run_export))
STAGES.register("evaluate", StageKind(EmptyConfig.from_dict, run_evaluate))
STAGES.register("tune", StageKind(_config_of("condense.tune", "TuneConfig"), run_tune, trains=True))
STAGES.register("pretrain", StageKind(_config_of("condense.ssl", "PretrainConfig"), run_pretrain, trains=True, needs_input=False))
STAGES.register("reduce-data", StageKind(_resolved_config_of("condense.reduce"), run_reduce, needs_input=False, measured=False))

