"""The one place ONNX Runtime sessions are made and fed: `onnx_session` (CPU provider, full graph
optimisation, thread count), `ort_input` / `ort_run` (a tensor or a batch dict, cast to the dtypes
the model declares) and `onnx_file_bytes` (the file plus its external data)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from condense.core import cpu
from condense.core.errors import ConfigError, InputFileError

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


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
        session = ort.InferenceSession(
            str(p), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own pybind exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputFileError(f"cannot load ONNX file {p}: {first}") from e
    _warn_if_cpu_saturates(session, p)
    return session


def _warn_if_cpu_saturates(session: Any, path: Path) -> None:
    """Warn when an int8 file built for a CPU with exact u8 x s8 sums runs on one without."""
    meta = session.get_modelmeta().custom_metadata_map
    built_for = meta.get("condense.int8_target")
    if meta.get("condense.int8_exact_on") != "u8s8-exact" or not built_for:
        return
    here = cpu.detect_target()  # the CPU really running it, whatever target new files are built for
    if not cpu.TARGETS[here].u8s8_exact:
        warnings.warn(f"{path}: int8 file built for {built_for}, whose int8 kernels sum u8 x s8 products exactly; "
                      f"this CPU ({here}) sums them in saturating int16, so outputs can differ from the "
                      f"quantized model. Re-export with target={here!r}.", stacklevel=3)


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
        raise InputFileError(f"cannot read ONNX file {p}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
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


def _as_array(v: Any, ort_type: str) -> np.ndarray:
    arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    dtype = _ORT_TYPES.get(ort_type)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return np.ascontiguousarray(arr)


def ort_input(session: Any, x: Any) -> dict[str, np.ndarray]:
    """Feed dict for a session, cast to the dtypes the model declares.

    `x`: a tensor / array for a single-input model, or a batch dict whose fields are named like
    the model's inputs (a single-input model also takes the `input` field). Extra fields
    (`target`, `index`, ...) are ignored; a missing input is a ConfigError naming it.
    """
    inputs = session.get_inputs()
    if not isinstance(x, dict):
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ConfigError(f"the ONNX model has {len(inputs)} inputs {names}; pass a dict with those fields")
        return {inputs[0].name: _as_array(x, inputs[0].type)}
    feed: dict[str, np.ndarray] = {}
    for inp in inputs:
        if inp.name in x:
            feed[inp.name] = _as_array(x[inp.name], inp.type)
        elif len(inputs) == 1 and "input" in x:
            feed[inp.name] = _as_array(x["input"], inp.type)
        else:
            raise ConfigError(f"the ONNX model reads input {inp.name!r}, but the batch has only {sorted(x)}")
    return feed


def ort_run(session: Any, x: Any) -> np.ndarray:
    """Run a session on a tensor or a batch dict (see `ort_input`) and return its first output."""
    return session.run(None, ort_input(session, x))[0]


__all__ = ["onnx_file_bytes", "onnx_session", "ort_input", "ort_run"]
