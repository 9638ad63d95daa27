"""fp32 ONNX export with an output-parity check, and the one place ONNX Runtime sessions are made.

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

from condense.core.errors import ConfigError, InputFileError, RunError
from condense.core.io import atomic_path

# Above this many bytes of weights, the protobuf 2 GiB limit forces ONNX external data
# (a `<name>.data` file next to the `.onnx`); below it the file is self-contained.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_500_000_000

_QUIET_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


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


def onnx_session(
    path: str | os.PathLike[str],
    threads: int | None = None,
    providers: list[str] | None = None,
    optimized_path: str | None = None,
) -> Any:
    """An `onnxruntime.InferenceSession` for `path` (CPU provider by default; all graph
    optimisations, sequential execution, which are ONNX Runtime's defaults).

    `threads` sets `intra_op_num_threads` (None: ONNX Runtime's default); `optimized_path` makes
    ORT write the graph it really runs (after its fusions) there. A missing, empty or corrupt
    file raises InputFileError.
    """
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"ONNX file not found: {p}")
    if p.stat().st_size == 0:
        raise InputFileError(f"ONNX file is empty: {p}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    try:
        return ort.InferenceSession(
            str(p), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own pybind exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputFileError(f"cannot load ONNX file {p}: {first}") from e


def onnx_file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of an ONNX model: the file plus every external-data file it references."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"ONNX file not found: {p}")
    total = p.stat().st_size
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise InputFileError(f"cannot read ONNX file {p}: {_short(e)}") from e
    seen: set[str] = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                f = p.parent / entry.value
                if f.is_file():
                    total += f.stat().st_size
    return total


def ort_input(session: Any, x: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Feed dict for a single-input session, cast to the dtype the model declares."""
    inp = session.get_inputs()[0]
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    dtype = _ORT_TYPES.get(inp.type)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return {inp.name: np.ascontiguousarray(arr)}


def ort_run(session: Any, x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Run a single-input session and return its first output."""
    return session.run(None, ort_input(session, x))[0]


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
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


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool, external: bool
) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        input_names=["input"],
        output_names=["logits"],
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        external_data=external,
        verbose=False,
    )


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool
) -> None:
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        opset_version=opset,
        dynamic_axes=dynamic_axes,
        verbose=False,
    )


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _other_batch(example: torch.Tensor, n: int) -> torch.Tensor:
    """`n` random samples shaped like one sample of `example` (integers within the example's range)."""
    g = torch.Generator().manual_seed(0)
    shape = (n, *example.shape[1:])
    if example.dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(example.dtype)
    if example.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    lo, hi = int(example.min()), int(example.max())
    return torch.randint(lo, hi + 1, shape, generator=g).to(example.dtype)


def _parity(
    model: nn.Module,
    file: Path,
    batches: list[torch.Tensor],
    atol: float,
    rtol: float,
    shown_path: Path,
) -> float:
    """Max |ort - torch| over `batches`; raises ExportParityError above atol + rtol*|torch|."""
    session = onnx_session(file)
    device = model_device(model)
    worst = 0.0
    for x in batches:
        with torch.no_grad():
            ref = output_tensor(model(x.to(device))).detach().float().cpu().numpy()
        got = np.asarray(ort_run(session, x.cpu()), dtype=np.float32)
        if got.shape != ref.shape:
            raise ExportParityError(
                f"ONNX export {shown_path}: output shape {got.shape} != PyTorch {ref.shape} "
                f"at batch size {len(x)}; file not written"
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
                f"ONNX export {shown_path} does not match PyTorch at batch size {len(x)}: "
                f"max abs diff {max_diff:.3g} exceeds tolerance atol={atol:g} + rtol={rtol:g}*|torch| "
                f"({int(bad.sum())} of {bad.size} values); file not written"
            )
    return worst


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """Export `model` to an fp32 ONNX file at `path` and check it against PyTorch.

    `example` is a batched input, normally one sample `(1, ...)`. With `dynamic_batch` the batch
    dimension is symbolic. With `check`, ONNX Runtime runs the example and a batch of 3 random
    samples of the same per-sample shape (2 if the example has 3; only the example when the batch
    is fixed) and every output must satisfy |ort - torch| <= atol + rtol*|torch|; otherwise
    ExportParityError, and nothing is written at `path`. The model is exported in eval mode and
    its train/eval mode is restored afterwards.
    """
    if not isinstance(example, torch.Tensor):
        raise ConfigError(f"export_onnx: example must be a tensor, got {type(example).__name__}")
    if example.dim() < 1 or example.shape[0] < 1:
        raise ConfigError(f"export_onnx: example must be a batch (N, ...) with N >= 1, got {tuple(example.shape)}")
    target = Path(path)
    device = model_device(model)
    example = example.to(device)
    was_training = model.training
    model.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
    try:
        tmp_file = workdir / target.name
        external = _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
        # Trace with batch 2 when the example is a single sample, so the tracer cannot
        # specialise the batch dimension to the constant 1.
        trace_x = example.expand(2, *example.shape[1:]).contiguous() if dynamic_batch and len(example) == 1 else example
        exporter, reason = "dynamo", None
        with _quiet():
            try:
                _export_dynamo(model, trace_x, tmp_file, opset, dynamic_batch, external)
            except Exception as e:
                reason = _short(e)
                exporter = "torchscript"
                shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir()
                try:
                    _export_torchscript(model, trace_x, tmp_file, opset, dynamic_batch)
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
            batches = [example]
            if dynamic_batch:
                batches.append(_other_batch(example, 3 if len(example) != 3 else 2).to(device))
            max_diff = _parity(model, tmp_file, batches, atol, rtol, target)
            checked = [len(b) for b in batches]

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
