"""The `export` stage kind's record (`condense.core.method`): the input model in each format,
parity-checked in the format's runtime and timed at batch 1; int8 when the input is quantized."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.core.method import METHODS, Job, Method, Outcome, jsonable
from condense.data.loader import example_inputs, heldout_inputs
from condense.export.formats import FORMATS, PRECISIONS, check_format, deploy_precision, export
from condense.export.onnx import export_onnx
from condense.quantize import export_int8_onnx


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
        if not self.formats:
            raise ConfigError("export.formats must name at least one format")
        for f in self.formats:
            check_format(f)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"export.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def apply_export(job: Job) -> Outcome:
    """Write the job's model in every format of the config; the measured row always gets the ONNX
    file ONNX Runtime runs (int8 when the model is quantized), whatever else is deployed."""
    cfg, model = job.config, job.input()
    example = example_inputs(job.splits.test, 1)
    out = Outcome(model)
    if deploy_precision(model, cfg.precision) == "int8":
        res = export_int8_onnx(model, example, job.folder / "model.int8.onnx",
                               heldout=heldout_inputs(job.splits.test), opset=cfg.opset)
        out.notes.extend(res.notes)
    else:
        res = export_onnx(model, example, job.folder / "model.onnx", opset=cfg.opset, atol=cfg.atol)
    out.deployed_onnx = Path(res.path)
    out.info["export"] = jsonable(res.to_dict())
    deployed = []
    for fmt in cfg.formats:
        if fmt == "onnx":
            continue
        r = export(model, example, job.folder / f"model{FORMATS[fmt]}", fmt, precision=cfg.precision,
                   calibration=job.splits.train, samples=job.splits.test, atol=cfg.atol,
                   calibration_samples=cfg.calibration_samples)
        deployed.append(jsonable(r.to_dict()))
        out.notes.extend(r.notes)
    out.info["deployed"] = deployed
    return out


METHODS.register("export", Method(family="export", parse=ExportStageConfig.from_dict, apply=apply_export,
                                  deploys="self", cli="export",
                                  help="ONNX (fp32 or int8), torch.export, ExecuTorch, TFLite; parity-checked"))
