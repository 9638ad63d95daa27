"""The `quantize` stage kind's record (`condense.core.method`). The schemes themselves
(static, dynamic, weight-only, QAT, ...) are `QUANTIZERS` records (`quantize/registry.py`); this
record reads them: whether a stage trains (QAT) and which edit kinds mark a quantized stage."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from condense.core.config import Config
from condense.core.method import METHODS, Job, Method, Outcome, jsonable
from condense.data.loader import example_inputs
from condense.quantize import QUANTIZERS, quantize, resolve_config
from condense.quantize.attached import quant_report_of
from condense.quantize.dynamic import DynamicConfig, export_dynamic_int8
from condense.quantize.modules.qat_fit import qat_fit


def scheme_of(config: Config) -> str:
    """The quantization scheme a stage's config names ("static", "qat", ...)."""
    return resolve_config(config)[0]


def trains(config: Config) -> bool:
    """Whether the scheme's record says its result trains (QAT) before it deploys."""
    return QUANTIZERS.get(scheme_of(config)).trains


def apply_quantize(job: Job) -> Outcome:
    """Quantize the job's model; a training scheme (QAT) trains it first (`qat_fit`, the stage's
    `train:`). A result that comes out int8 is written as the int8 ONNX file by the runner
    (`Method.deploys`); the others (weight-only, dynamic) are measured as their float export."""
    model = job.input()
    info = {"quantize_config": job.config.to_dict()}
    if isinstance(job.config, DynamicConfig):  # torch's dynamic int8 (the transformer scheme deploys its own plan)
        return _dynamic(job, model, info)
    if trains(job.config):
        res = qat_fit(model, job.splits.train, job.config, job.train(None), job.splits.val,
                      example=example_inputs(job.splits.test, 1), resume=job.resume)
        qmodel = res.model
        info["qat"] = jsonable(res.to_dict())
    else:
        qmodel = quantize(model, job.config, calibration=job.splits.train)
    report = quant_report_of(qmodel)
    if report is not None:
        info["quant_report"] = jsonable(report)
    return Outcome(qmodel, info=info)


def _dynamic(job: Job, model: nn.Module, info: dict[str, Any]) -> Outcome:
    """Dynamic int8 deploys as ONNX Runtime's dynamic-int8 file; torch's dynamic-int8 layers hold
    packed state that safetensors cannot store, so the stage's artifact is the float model (as
    `condense quantize --method dynamic` saves it) and its measured file the int8 one."""
    job.folder.mkdir(parents=True, exist_ok=True)
    res = export_dynamic_int8(model, example_inputs(job.splits.test, 1), job.folder / "model.dynamic.onnx", job.config,
                              check_speed=False)
    info["dynamic_export"] = jsonable(res)
    return Outcome(model, info=info, deployed_onnx=Path(res["path"]),
                   notes=["dynamic int8: the measured file is ONNX Runtime's dynamic-int8 model.dynamic.onnx; the "
                          "artifact holds the float model (torch's dynamic-int8 layers cannot be stored as safetensors)"])


def _parse(raw: dict) -> Config:
    return resolve_config(raw)[1]


METHODS.register("quantize", Method(
    family="quantize", parse=_parse, apply=apply_quantize, trains_when=trains, deploys="auto", cli="quantize",
    edit_kinds=tuple(sorted({k for n in QUANTIZERS.names() for k in QUANTIZERS.get(n).edit_kinds})),
    help="int8 static / dynamic, weight-only low-bit, QAT (deployed as int8 ONNX where it is int8)"))
