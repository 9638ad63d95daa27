"""One entry point for every deployment format: `export(model, example, path, format=...)`.

Formats: `onnx` (ONNX Runtime), `pt2` (a torch.export program saved with `torch.export.save`),
`executorch` (an XNNPACK-lowered `.pte`, ExecuTorch's runtime) and `tflite` (LiteRT, through
`litert-torch`). Each export is checked against PyTorch on sample inputs in the format's own
runtime (max |diff|, top-1 agreement, cosine) and fails above tolerance; the file appears at
`path` only after the check passed. Batch-1 latency is measured in the same runtime with its
thread count recorded. The runtimes of `executorch` and `tflite` are optional extras; a missing
one gives one line naming the extra to install.

Precision "auto" is the one place the int8-or-fp32 decision is made: int8 when the model carries
condense's int8 plan (static PTQ / QAT wrappers, or the transformer int8 plan), fp32 otherwise.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, InputFileError, did_you_mean
from condense.data.calibration import iter_calibration
from condense.evaluate.profile import measure_latency
from condense.export.common import SCHEMES, MissingExtraError, int8_scheme  # noqa: F401  (re-exported)
from condense.export.executorch import ExecuTorchRunner, export_executorch
from condense.export.onnx import (
    ExportParityError,
    export_onnx,
    onnx_session,
    ort_run,
    output_tensor,
)
from condense.export.pt2 import export_pt2, plain_layers
from condense.export.tflite import LiteRTRunner, export_tflite
from condense.models.hf import is_encoder
from condense.models.signature import model_inputs
from condense.quantize.attached import int8_plan_of
from condense.quantize.graph.onnx_int8 import export_int8_onnx
from condense.quantize.modules.fake_quant import quant_wrappers

FORMATS: dict[str, str] = {
    "onnx": ".onnx",
    "pt2": ".pt2",
    "executorch": ".pte",
    "tflite": ".tflite",
}
PRECISIONS = ("auto", "fp32", "int8")
RUNTIMES = {"onnx": "onnxruntime", "pt2": "torch.export", "executorch": "executorch", "tflite": "litert"}


@dataclasses.dataclass
class DeployResult:
    """One deployed file: where, how big, how close to PyTorch, how fast in its runtime."""

    format: str
    precision: str
    path: Path
    bytes: int
    runtime: str
    samples: int  # inputs the parity check ran on
    max_abs_diff: float
    top1_agreement: float | None  # classifiers
    mean_cosine: float
    latency_ms: float | None  # batch-1 p50 in `runtime`
    latency_p90_ms: float | None
    threads: int | None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}{did_you_mean(fmt, FORMATS)}; "
                          f"known: {', '.join(FORMATS)}")
    return fmt


def deploy_precision(model: nn.Module, precision: str = "auto") -> str:
    """"int8" when `model` carries condense's int8 plan (QuantWrappers or the transformer plan)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "int8" if quant_wrappers(model) or int8_plan_of(model) is not None else "fp32"




def batch_items(batch: Any) -> list[Any]:
    """Split a batched input (tensor or dict of tensors) into batch-1 inputs."""
    if isinstance(batch, dict):
        n = len(next(iter(batch.values())))
        return [{k: v[i:i + 1] for k, v in batch.items()} for i in range(n)]
    return [batch[i:i + 1] for i in range(len(batch))]


def _samples(model: nn.Module, data: Any, n: int) -> list[Any]:
    """At most `n` batch-1 inputs for `model` from `data`: a list of batch-1 inputs (taken as they
    are), or anything quantization calibration takes (`quantize.calibration.iter_calibration`:
    a dataset, a batched tensor or batch dict, an iterable of batches)."""
    if data is None:
        return []
    if isinstance(data, list) and not (data and isinstance(data[0], (tuple, list))):
        return data[:n]
    out: list[Any] = []
    for batch in iter_calibration(data, limit=n):
        inputs = model_inputs(model, {"input": batch} if isinstance(batch, torch.Tensor) else batch)
        out.extend(batch_items(inputs["input"] if list(inputs) == ["input"] else inputs))
    return out[:n]


def _call(model: Callable[..., Any], x: Any) -> torch.Tensor:
    with torch.no_grad():
        out = model(**x) if isinstance(x, dict) else model(x)
    if isinstance(out, dict) and "sentence_embedding" in out:
        out = out["sentence_embedding"]
    return output_tensor(out).detach().float().reshape(1, -1)


def parity(reference: Callable[..., Any], runner: Callable[[Any], Any], samples: Sequence[Any]) -> dict[str, Any]:
    """Max |diff|, top-1 agreement (outputs wider than 1) and mean cosine of `runner` vs `reference`."""
    ref = torch.cat([_call(reference, x) for x in samples])
    got = torch.cat([output_tensor(runner(x)).detach().float().reshape(1, -1) for x in samples])
    if got.shape != ref.shape:
        raise ExportParityError(f"exported output shape {tuple(got.shape)} differs from PyTorch's {tuple(ref.shape)}")
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=1, eps=1e-12)
    return {
        "samples": len(samples),
        "max_abs_diff": float((got - ref).abs().max()),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).float().mean()) if ref.shape[1] > 1 else None,
        "mean_cosine": float(cos.mean()),
    }


def export(
    model: nn.Module,
    example: Any,
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    precision: str = "auto",
    calibration: Any = None,
    samples: Any = None,
    atol: float = 1e-4,
    min_agreement: float = 0.95,
    min_cosine: float = 0.98,
    latency: bool = True,
    repeats: int = 30,
    calibration_samples: int = 128,
    parity_samples: int = 64,
    threads: int | None = None,
) -> DeployResult:
    """Export `model` to `format` at `path`, check it in its runtime, time it at batch 1.

    `example` is one batch-1 input. `calibration` (int8 on executorch / tflite: a dataset, a
    batched tensor / dict or a list of batch-1 inputs) feeds the int8 observers; `samples` (same
    forms; default `example`) feed the parity check. fp32 fails when max |diff| > `atol`; int8
    fails below `min_agreement` top-1 agreement (classifiers) or `min_cosine` mean cosine (other
    outputs). Nothing is left at `path` when an export or its check fails. `threads`: the
    runtime's thread count where it takes one (see `load_runner`).
    """
    fmt = check_format(format)
    prec = deploy_precision(model, precision)
    model = model.eval()
    path = Path(path)
    check = _samples(model, samples, parity_samples) or [example]
    notes: list[str] = []
    if fmt == "pt2" and prec == "int8" and precision == "auto":
        prec = "fp32"
        notes.append("pt2 holds a float program: the quantized model's weights are stored on their int8 grid as "
                     "float32, activations are not quantized (executorch or onnx run int8 kernels)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name  # the final name, so ONNX external data keeps its reference
        reference, extra_notes = _WRITERS[fmt](model, example, tmp_path, prec, calibration, calibration_samples)
        notes.extend(extra_notes)
        runner = load_runner(tmp_path, fmt, threads=threads)
        p = parity(reference, runner, check)
        if is_encoder(model):  # an embedding's argmax means nothing: the check is cosine
            p["top1_agreement"] = None
        _enforce(fmt, prec, p, atol, min_agreement, min_cosine)
        lat = None
        if latency:
            lat = measure_latency(lambda: runner(example), warmup=5, repeats=repeats)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir() if f.is_file())
        for f in Path(tmp).iterdir():  # the file (and ONNX external data, if any) moves in after the check
            os.replace(f, path.parent / f.name)
    return DeployResult(format=fmt, precision=prec, path=path, bytes=size, runtime=RUNTIMES[fmt],
                        samples=p["samples"], max_abs_diff=p["max_abs_diff"], top1_agreement=p["top1_agreement"],
                        mean_cosine=p["mean_cosine"], latency_ms=None if lat is None else lat["p50_ms"],
                        latency_p90_ms=None if lat is None else lat["p90_ms"],
                        threads=runtime_threads(fmt, threads), notes=notes)


def _enforce(fmt: str, prec: str, p: dict[str, Any], atol: float, min_agreement: float, min_cosine: float) -> None:
    if prec == "fp32" and p["max_abs_diff"] > atol:
        raise ExportParityError(f"{fmt} fp32 export differs from PyTorch by {p['max_abs_diff']:.3g} > atol {atol:g} "
                                f"on {p['samples']} samples")
    if prec == "int8":
        agree = p["top1_agreement"]
        if agree is not None and agree < min_agreement:
            raise ExportParityError(f"{fmt} int8 export agrees with PyTorch on {agree:.1%} of top-1 predictions "
                                    f"< {min_agreement:.0%} ({p['samples']} samples)")
        if agree is None and p["mean_cosine"] < min_cosine:
            raise ExportParityError(f"{fmt} int8 export: mean cosine to PyTorch {p['mean_cosine']:.4f} < {min_cosine}")


# -- one writer per format: (model, example, path, precision, calibration, n) ->
#    (the PyTorch model the file is compared with, notes) ------------------------------------------
Writer = Callable[[nn.Module, Any, Path, str, Any, int], tuple[nn.Module, list[str]]]


def _write_onnx(model: nn.Module, example: Any, path: Path, prec: str, calibration: Any, n: int) -> Any:
    if prec == "fp32":
        export_onnx(model, example, path)
        return model, []
    if deploy_precision(model) != "int8":
        raise ConfigError("onnx int8 export needs a quantized model: run `condense quantize` first "
                          "(the int8 ONNX file is written from its calibrated plan)")
    held = _samples(model, calibration, n)
    heldout = torch.cat(held) if held and isinstance(held[0], torch.Tensor) else None
    return model, list(export_int8_onnx(model, example, path, heldout=heldout).notes)


def _write_pt2(model: nn.Module, example: Any, path: Path, prec: str, calibration: Any, n: int) -> Any:
    if prec == "int8":
        raise ConfigError("pt2 stores the float program torch.export captures; for int8 use format "
                          "'executorch' (XNNPACK int8 kernels) or 'onnx'")
    export_pt2(model, example, path)
    return plain_layers(model), []


def _write_executorch(model: nn.Module, example: Any, path: Path, prec: str, calibration: Any, n: int) -> Any:
    scheme = int8_scheme(model) if prec == "int8" else None
    calib = _samples(model, calibration, n) if scheme == "static" else []
    export_executorch(model, example, path, precision=prec, calibration=calib, scheme=scheme or "auto")
    if prec == "fp32":
        return plain_layers(model), []
    # a model with condense's int8 wrappers is compared with its own simulation
    if scheme == "dynamic":
        return model, ["int8 by PT2E with XNNPACK's dynamic quantizer: Linear weights int8 per channel, their "
                       "inputs quantized per call (a transformer's outlier activations rule out one static scale)"]
    return model, [f"int8 by PT2E with XNNPACK's per-channel symmetric quantizer, calibrated on {len(calib)} samples"]


def _write_tflite(model: nn.Module, example: Any, path: Path, prec: str, calibration: Any, n: int) -> Any:
    scheme = int8_scheme(model) if prec == "int8" else None
    calib = _samples(model, calibration, n) if scheme == "static" else []
    export_tflite(model, example, path, precision=prec, calibration=calib, scheme=scheme or "auto")
    if prec == "fp32":
        return plain_layers(model), []
    if scheme == "dynamic":
        return model, ["int8 by the AI Edge Quantizer's dynamic recipe: weights (embeddings included) int8 per "
                       "channel, activations quantized per call"]
    return model, [f"int8 by PT2E with litert-torch's per-channel symmetric quantizer, calibrated on {len(calib)} samples"]


_WRITERS: dict[str, Writer] = {
    "onnx": _write_onnx,
    "pt2": _write_pt2,
    "executorch": _write_executorch,
    "tflite": _write_tflite,
}


def runtime_threads(fmt: str, threads: int | None = None) -> int | None:
    """The thread count a format's runtime runs with under `load_runner(..., threads=threads)`."""
    if fmt in ("onnx", "tflite"):
        return threads or os.cpu_count() or 1
    if fmt == "pt2":
        return torch.get_num_threads()
    return ExecuTorchRunner.threads()


def load_runner(path: str | os.PathLike[str], format: str | None = None, threads: int | None = None) -> Callable[[Any], torch.Tensor]:
    """A deployed file as a callable on batch-1 inputs returning a tensor, run in its own runtime.

    `format` defaults to the one the file's suffix names. `threads` sets ONNX Runtime's and
    LiteRT's thread count (None: the machine's CPU count); ExecuTorch uses its own thread pool and
    torch.export programs torch's intra-op threads.
    """
    p = Path(path)
    if format is None:
        by_suffix = {v: k for k, v in FORMATS.items()}
        if p.suffix not in by_suffix:
            raise ConfigError(f"{p}: cannot tell the format from the suffix {p.suffix!r}; "
                              f"known: {', '.join(FORMATS.values())}")
        format = by_suffix[p.suffix]
    check_format(format)
    if not p.is_file():
        raise InputFileError(f"{format} file not found: {p}")
    threads = runtime_threads(format, threads) if format in ("onnx", "tflite") else None
    if format == "onnx":
        session = onnx_session(p, threads=threads)
        return lambda x: torch.from_numpy(ort_run(session, x))
    if format == "pt2":
        try:
            module = torch.export.load(str(p)).module()
        except Exception as e:  # torch.export.load raises zipfile / pickle / runtime errors
            raise InputFileError(f"cannot load pt2 program {p}: {e}") from e
        return lambda x: _call(module, x)
    if format == "executorch":
        return ExecuTorchRunner(p)
    return LiteRTRunner(p, threads=threads)
