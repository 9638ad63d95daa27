"""fp32 ONNX export with an output-parity check (ONNX Runtime sessions: `condense.export.ort`).

`export_onnx(model, example, path)` writes a single self-contained `.onnx` file (input "input",
output "logits", dynamic batch dimension), runs it in ONNX Runtime on the example and on a batch
of another size, and compares with PyTorch. The file appears at `path` only after the check
passed: export happens in a temporary folder next to `path`, and the finished file is moved in
with `atomic_path`, so a failed or mismatching export never leaves a file (partial or wrong) there.

Exporter: the torch.export-based ("dynamo") exporter first; if it raises, the legacy TorchScript
exporter; `ExportResult.exporter` records which one wrote the file (and `fallback_reason` why).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.core.io import atomic_path
from condense.export.ort import onnx_file_bytes, onnx_session, ort_input, ort_run  # noqa: F401  (re-exported)
from condense.export.torchlib import shared_torchlib_registry
from condense.models.signature import as_batch, output_name, signature_of

# Above this many bytes of weights, the protobuf 2 GiB limit forces ONNX external data
# (a `<name>.data` file next to the `.onnx`); below it the file is self-contained.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_500_000_000

_QUIET_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")


class ExportParityError(RunError):
    """The exported ONNX model's outputs differ from PyTorch's beyond the tolerance."""


@dataclasses.dataclass
class ExportResult:
    """What `export_onnx` wrote and how well it matches PyTorch."""

    path: Path
    bytes: int  # bytes on disk: the .onnx file plus any external-data file written with it
    exporter: str  # "dynamo" (torch.export based) or "torchscript" (legacy fallback)
    max_abs_diff: float | None  # None when check=False
    checked_batches: list[int]  # batch sizes the parity check ran on
    fallback_reason: str | None = None  # why the dynamo exporter was not used, if it was not

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def output_tensor(output: Any) -> torch.Tensor:
    """The logits tensor of a model output: the tensor itself, `.logits`, or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output:
        return output_tensor(output[0])
    raise RunError(f"model output of type {type(output).__name__} holds no logits tensor")


@contextlib.contextmanager
def quiet_onnx_export() -> Iterator[io.StringIO]:
    """Silence the exporters: progress prints, warnings (torchvision, deprecations) and log lines."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    buf = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def model_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@dataclasses.dataclass
class _Inputs:
    """What the exporter traces with: the model's inputs by name, how forward takes them, and
    which axes of each are symbolic in the file."""

    tensors: dict[str, torch.Tensor]
    keyword: bool
    dynamic: dict[str, tuple[int, ...]]  # name -> symbolic axes (empty: fully static)

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def call_args(self) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        if self.keyword:
            return (), dict(self.tensors)
        return tuple(self.tensors.values()), {}


def _axis_name(key: str, axis: int) -> str:
    return "batch" if axis == 0 else f"{key}_dim{axis}" if key not in _SEQ_KEYS else "sequence"


_SEQ_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _export_dynamo(model: nn.Module, inputs: _Inputs, path: Path, opset: int, external: bool, output_name: str) -> None:
    dims: dict[str, torch.export.Dim] = {}

    def dim(key: str, axis: int) -> torch.export.Dim:
        name = _axis_name(key, axis)
        return dims.setdefault(name, torch.export.Dim(name, min=1))

    shapes = {k: {a: dim(k, a) for a in axes} or None for k, axes in inputs.dynamic.items()}
    args, kwargs = inputs.call_args()
    dynamic_shapes: Any = None
    if any(v for v in shapes.values()):
        dynamic_shapes = shapes if inputs.keyword else tuple(shapes[k] for k in inputs.names)
    with shared_torchlib_registry():  # the op registry built once per process, not per export
        torch.onnx.export(
            model,
            args,
            str(path),
            kwargs=kwargs or None,
            dynamo=True,
            input_names=inputs.names,
            output_names=[output_name],
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            external_data=external,
            verbose=False,
        )


def export_torchscript(model: nn.Module, inputs: _Inputs, path: Path, opset: int, output_name: str) -> None:
    axes = {k: {a: _axis_name(k, a) for a in ax} for k, ax in inputs.dynamic.items() if ax}
    if 0 in axes.get(inputs.names[0], {}):
        axes[output_name] = {0: "batch"}
    args, kwargs = inputs.call_args()
    torch.onnx.export(
        model,
        args,
        str(path),
        kwargs=kwargs or None,
        dynamo=False,
        input_names=inputs.names,
        output_names=[output_name],
        opset_version=opset,
        dynamic_axes=axes or None,
        verbose=False,
    )


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _other_tensor(x: torch.Tensor, n: int, axes: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """`n` random samples shaped like one sample of `x`, its non-batch symbolic axes 3 longer.

    Floats: standard normal. Integers (token ids): uniform within the example's range; an integer
    tensor of only 0 / 1 (an attention mask) becomes all ones."""
    shape = [n, *x.shape[1:]]
    for a in axes:
        if a >= 1:
            shape[a] += 3
    if x.dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(x.dtype)
    if x.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    lo, hi = (int(x.min()), int(x.max())) if x.numel() else (0, 1)
    if lo >= 0 and hi <= 1:
        return torch.ones(shape, dtype=x.dtype)
    return torch.randint(lo, hi + 1, shape, generator=g).to(x.dtype)


def other_batch(inputs: _Inputs, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: _other_tensor(v, n, inputs.dynamic.get(k, ()), g) for k, v in inputs.tensors.items()}


def check_parity(
    model: nn.Module,
    file: Path,
    batches: list[dict[str, torch.Tensor]],
    inputs: _Inputs,
    atol: float,
    rtol: float,
    shown_path: Path,
) -> float:
    """Max |ort - torch| over `batches`; raises ExportParityError above atol + rtol*|torch|."""
    session = onnx_session(file)
    device = model_device(model)
    worst = 0.0
    for b in batches:
        n = len(next(iter(b.values())))
        args = {k: v.to(device) for k, v in b.items()}
        with torch.no_grad():
            out = model(**args) if inputs.keyword else model(*args.values())
            ref = output_tensor(out).detach().float().cpu().numpy()
        got = np.asarray(session.run(None, ort_input(session, {k: v.cpu() for k, v in b.items()}))[0], dtype=np.float32)
        if got.shape != ref.shape:
            raise ExportParityError(
                f"ONNX export {shown_path}: output shape {got.shape} != PyTorch {ref.shape} "
                f"at batch size {n}; file not written"
            )
        with np.errstate(invalid="ignore"):
            diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
            # The same NaN / inf in both is agreement (a broken model, but not a broken export).
            same = (np.isnan(got) & np.isnan(ref)) | (np.isinf(got) & (got == ref))
            bad = ~(diff <= atol + rtol * np.abs(ref)) & ~same
        finite = diff[~same]
        max_diff = float(finite.max()) if finite.size else 0.0
        worst = max(worst, max_diff)
        if bool(bad.any()):
            raise ExportParityError(
                f"ONNX export {shown_path} does not match PyTorch at batch size {n}: "
                f"max abs diff {max_diff:.3g} exceeds tolerance atol={atol:g} + rtol={rtol:g}*|torch| "
                f"({int(bad.sum())} of {bad.size} values); file not written"
            )
    return worst


def export_inputs(model: nn.Module, example: Any, dynamic_batch: bool = True) -> _Inputs:
    """The named inputs `model` reads from `example` (a tensor, or a batch dict: its signature's
    fields, in order), and their symbolic axes (batch, plus the signature's declared ones)."""
    if isinstance(example, torch.Tensor):
        if example.dim() < 1 or example.shape[0] < 1:
            raise ConfigError(f"export_onnx: example must be a batch (N, ...) with N >= 1, got {tuple(example.shape)}")
    elif not isinstance(example, dict):
        raise ConfigError(f"export_onnx: example must be a tensor or a dict of tensors, got {type(example).__name__}")
    sig = signature_of(model)
    batch = as_batch(example)
    if isinstance(example, torch.Tensor) and sig.required != ("input",):
        raise ConfigError(f"export_onnx: the model reads {list(sig.names)}; pass the example as a dict with those fields")
    keys = sig.present(batch)
    tensors = {}
    for k in keys:
        v = batch[k]
        if not isinstance(v, torch.Tensor) or v.dim() < 1 or v.shape[0] < 1:
            raise ConfigError(f"export_onnx: example field {k!r} must be a batched tensor (N, ...)")
        tensors[k] = v
    if len({int(t.shape[0]) for t in tensors.values()}) != 1:
        raise ConfigError(f"export_onnx: example fields differ in batch size: { {k: tuple(v.shape) for k, v in tensors.items()} }")
    dynamic = {k: ((0,) if dynamic_batch else ()) + tuple(a for a in sig.dynamic.get(k, ()) if a < tensors[k].dim())
               for k in keys}
    return _Inputs(tensors, sig.keyword, dynamic)


def export_onnx(
    model: nn.Module,
    example: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """Export `model` to an fp32 ONNX file at `path` and check it against PyTorch.

    `example` is a batched input, normally one sample: a tensor `(1, ...)` for a model called as
    `model(x)`, or a batch dict for a model with an input signature (e.g. a Hugging Face encoder:
    `input_ids`, `attention_mask`). The file's inputs are named like the signature's fields (a
    single-tensor model: "input"), its output "logits" (or `model.condense_output_name`). With
    `dynamic_batch` the batch axis is symbolic, and so are the axes the signature declares
    dynamic (the sequence axis of token inputs). With `check`, ONNX Runtime runs the example and
    a batch of 3 random samples (2 if the example has 3; declared dynamic axes 3 longer; only the
    example when the batch is fixed) and every output must satisfy |ort - torch| <= atol +
    rtol*|torch|; otherwise ExportParityError, and nothing is written at `path`. The model is
    exported in eval mode and its train/eval mode is restored afterwards.
    """
    inputs = export_inputs(model, example, dynamic_batch)
    out_name = output_name(model)
    target = Path(path)
    device = model_device(model)
    inputs.tensors = {k: v.to(device) for k, v in inputs.tensors.items()}
    was_training = model.training
    model.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
    try:
        tmp_file = workdir / target.name
        external = _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
        # Trace with batch 2 when the example is a single sample, so the tracer cannot
        # specialise the batch dimension to the constant 1.
        n_example = len(next(iter(inputs.tensors.values())))
        trace = inputs
        if dynamic_batch and n_example == 1:
            trace = dataclasses.replace(inputs, tensors={k: v.expand(2, *v.shape[1:]).contiguous()
                                                          for k, v in inputs.tensors.items()})
        exporter, reason = "dynamo", None
        with quiet_onnx_export():
            try:
                _export_dynamo(model, trace, tmp_file, opset, external, out_name)
            except Exception as e:
                reason = _short(e)
                exporter = "torchscript"
                shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir()
                try:
                    export_torchscript(model, trace, tmp_file, opset, out_name)
                except Exception as e2:
                    raise RunError(
                        f"ONNX export to {target} failed with both exporters: dynamo: {reason}; "
                        f"torchscript: {_short(e2)}"
                    ) from e2
        if not tmp_file.is_file():
            raise RunError(f"ONNX export to {target}: the exporter wrote no file")

        checked: list[int] = []
        max_diff: float | None = None
        if check:
            batches = [inputs.tensors]
            if dynamic_batch:
                batches.append({k: v.to(device) for k, v in other_batch(inputs, 3 if n_example != 3 else 2).items()})
            max_diff = check_parity(model, tmp_file, batches, inputs, atol, rtol, target)
            checked = [len(next(iter(b.values()))) for b in batches]

        # External-data files (large models only) first, the .onnx itself last and atomically.
        extras = [f for f in workdir.iterdir() if f != tmp_file]
        for f in extras:
            os.replace(f, target.parent / f.name)
        with atomic_path(target) as tmp:
            os.replace(tmp_file, tmp)
        size = target.stat().st_size + sum((target.parent / f.name).stat().st_size for f in extras)
        return ExportResult(
            path=target,
            bytes=int(size),
            exporter=exporter,
            max_abs_diff=max_diff,
            checked_batches=checked,
            fallback_reason=reason,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        model.train(was_training)
