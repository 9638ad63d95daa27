"""What a model costs: parameters, FLOPs, bytes on disk and latency on the backend that runs it.

Numbers follow the design's "honest numbers" rule: size is bytes of files on disk (never
parameters x 4), latency is the median of repeated timed runs after warm-up, measured per
runtime (PyTorch eager, ONNX Runtime) at each batch size, with the thread count recorded.
"""
from __future__ import annotations

import gc
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.errors import ConfigError, InputFileError, did_you_mean
from condense.evaluate.counts import count_macs, count_parameters
from condense.evaluate.timing import MAX_SPREAD, machine_load
from condense.export.onnx import export_onnx, model_device, onnx_file_bytes, onnx_session, ort_input
from condense.models.signature import (
    as_batch,
    batch_size_of,
    batch_to,
    call_model,
    repeat_batch,
    signature_of,
    slice_batch,
)

RUNTIMES = ("torch", "onnxruntime")


def count_flops(model: nn.Module, example: Any) -> dict[str, int]:
    """FLOPs and MACs of one forward pass on ONE sample (`example[:1]`, a tensor or a batch
    dict), eval mode.

    `flops` is torch.utils.flop_counter's count: 2 per multiply-add of matmul / linear / conv /
    attention (a Linear(10, 5) is 100 flops); element-wise ops (activations, normalisation,
    bias, pooling) are not counted. `macs` = flops // 2 (multiply-accumulates). torch's fused
    eval-mode Transformer fast path is turned off while counting (its kernels have no flop formula:
    a `nn.TransformerEncoder` would count only its head).
    """
    macs = count_macs(model, batch_to(slice_batch(example, 1), model_device(model)))
    flops = 2 * macs
    return {"flops": flops, "macs": flops // 2}


def measure_latency(
    run: Callable[[], Any],
    *,
    warmup: int = 5,
    repeats: int = 30,
    min_time_s: float = 0.0,
) -> dict[str, float | int]:
    """Time `run()`: `warmup` untimed calls, then at least `repeats` timed calls (and more until
    `min_time_s` of timed calls have passed), each with time.perf_counter, garbage collection
    paused. Returns the median (`p50_ms`), 90th percentile, mean and minimum in milliseconds.
    """
    if warmup < 1:
        raise ConfigError(f"measure_latency: warmup must be >= 1, got {warmup}")
    if repeats < 3:
        raise ConfigError(f"measure_latency: repeats must be >= 3 (a median needs several runs), got {repeats}")
    if min_time_s < 0:
        raise ConfigError(f"measure_latency: min_time_s must be >= 0, got {min_time_s}")
    for _ in range(warmup):
        run()
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        total = 0.0
        while len(times) < repeats or total < min_time_s:
            t0 = time.perf_counter()
            run()
            dt = time.perf_counter() - t0
            times.append(dt)
            total += dt
    finally:
        if gc_was_enabled:
            gc.enable()
    ms = np.asarray(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "repeats": len(times),
    }


def path_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a file, or of every file under a folder (symlinks not followed)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        total = 0
        for root, _dirs, files in os.walk(p):
            for name in files:
                f = Path(root) / name
                if not f.is_symlink():
                    total += f.stat().st_size
        return total
    raise InputFileError(f"artifact not found: {p}")


def cpu_name() -> str | None:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor(), else None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict[str, Any]:
    """Versions and hardware that latency numbers depend on."""
    import onnxruntime as ort

    return {
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def _summary(lat: dict[str, float | int], batch_size: int) -> dict[str, float | int | bool | None]:
    p50 = float(lat["p50_ms"])
    spread = float(lat["p90_ms"]) / p50 if p50 > 0 else None
    return {
        **lat,
        "batch_size": batch_size,
        "per_sample_ms": p50 / batch_size,
        "samples_per_s": (batch_size * 1e3 / p50) if p50 > 0 else float("inf"),
        "p90_over_p50": spread,
        "reliable": spread is not None and spread <= MAX_SPREAD,  # p90 past MAX_SPREAD x the median: noise
    }


def _torch_latency(
    model: nn.Module, x1: Any, batch_sizes: Sequence[int], warmup: int, repeats: int
) -> dict[str, Any]:
    device = model_device(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out: dict[str, Any] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for bs in batch_sizes:
                xb = batch_to(repeat_batch(x1, bs), device)

                def run(xb: Any = xb) -> Any:
                    y = call_model(model, xb)
                    sync()
                    return y

                out[str(bs)] = _summary(measure_latency(run, warmup=warmup, repeats=repeats), bs)
    finally:
        model.train(was_training)
    return out


def _ort_latency(
    session: Any, x1: Any, batch_sizes: Sequence[int], warmup: int, repeats: int
) -> dict[str, Any]:
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    out: dict[str, Any] = {}
    for bs in batch_sizes:
        if fixed is not None and bs != fixed:
            out[str(bs)] = {"batch_size": bs, "skipped": f"the ONNX model has a fixed batch size of {fixed}"}
            continue
        feed = ort_input(session, repeat_batch(x1, bs))

        def run(feed: dict[str, np.ndarray] = feed) -> Any:
            return session.run(None, feed)

        out[str(bs)] = _summary(measure_latency(run, warmup=warmup, repeats=repeats), bs)
    return out


def at_sequence_length(model: nn.Module, example: Any, seq_len: int) -> Any:
    """One sample of `example` with every input axis the model's signature declares dynamic (the
    sequence axis of token inputs) set to `seq_len`: tokens are repeated cyclically from the
    sample's real (unmasked) ones, the attention mask is all ones, so latency is measured on a
    full `seq_len`-token input."""
    sig = signature_of(model)
    if not sig.dynamic:
        raise ConfigError("profile: seq_len is for models with a sequence axis (an input signature with dynamic "
                          "axes, e.g. a Hugging Face encoder); this model declares none")
    b = dict(as_batch(slice_batch(example, 1)))
    mask = b.get("attention_mask")
    real = int(mask[0].sum()) if isinstance(mask, torch.Tensor) else None
    for key, axes in sig.dynamic.items():
        v = b.get(key)
        if not isinstance(v, torch.Tensor):
            continue
        for a in axes:
            if a >= v.dim():
                continue
            if key == "attention_mask":
                shape = list(v.shape)
                shape[a] = seq_len
                v = torch.ones(shape, dtype=v.dtype)
                continue
            n = v.shape[a] if real is None or a != 1 else max(1, min(real, v.shape[a]))
            idx = torch.arange(seq_len) % n
            v = v.index_select(a, idx)
        b[key] = v
    return b


def profile(
    model: nn.Module,
    example: Any,
    *,
    runtimes: Sequence[str] = RUNTIMES,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int | None = None,
    artifact_path: str | os.PathLike[str] | None = None,
    onnx_path: str | os.PathLike[str] | None = None,
    warmup: int = 5,
    repeats: int = 30,
    seq_len: int | None = None,
) -> dict[str, Any]:
    """Profile `model` on inputs shaped like `example` (its first sample; bigger batches repeat it).

    `example`: a tensor, or a batch dict for a model with an input signature (a Hugging Face
    encoder: `input_ids`, `attention_mask`). `seq_len`: for such models, the sequence length
    the FLOPs and latency are measured at (default: the example's own); recorded as `seq_len`.

    Returns one JSON-serialisable dict:
      params, nonzero_params, flops, macs (per sample, see `count_flops`), input_shape,
      artifact_bytes (files at `artifact_path`, or None), onnx_path / onnx_bytes / onnx_exported /
      onnx_exporter (the ONNX file ONNX Runtime ran: `onnx_path`, or a temporary fp32 export,
      unchecked, when None; all None / False without the onnxruntime runtime),
      threads (intra-op threads for both runtimes), batch_sizes, runtimes,
      latency[runtime][str(batch_size)] = {p50_ms, p90_ms, mean_ms, min_ms, repeats, batch_size,
      per_sample_ms, samples_per_s, p90_over_p50, reliable} (or {batch_size, skipped} for a
      fixed-batch ONNX file; `reliable` is False when p90 exceeds `timing.MAX_SPREAD` x p50),
      environment (torch / onnxruntime versions, CPU name, ...), load (1-minute load average and
      CPU count right after the timing: above the CPU count, no latency here is reliable).
    Models are timed one after the other: to compare models, time them together
    (`condense.evaluate.timing.timed_pass` / `onnx_latency_pass`).
    torch's thread count is set to `threads` for the measurement and restored afterwards.
    """
    runtimes = (runtimes,) if isinstance(runtimes, str) else tuple(runtimes)
    for rt in runtimes:
        if rt not in RUNTIMES:
            raise ConfigError(f"profile: unknown runtime {rt!r}{did_you_mean(rt, RUNTIMES)}; known: {', '.join(RUNTIMES)}")
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"profile: batch_sizes must be integers >= 1, got {list(batch_sizes)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"profile: threads must be >= 1, got {threads}")
    try:
        n = batch_size_of(example)
    except ConfigError:
        n = 0
    if n < 1:
        raise ConfigError("profile: example must be a batched tensor (1, ...) or a dict of batched tensors")
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"profile: seq_len must be >= 1, got {seq_len}")
    x1 = at_sequence_length(model, example, seq_len) if seq_len is not None else slice_batch(example, 1)
    if not isinstance(x1, torch.Tensor):
        x1 = {k: v for k, v in x1.items() if k not in ("target", "index")}

    result: dict[str, Any] = {**count_parameters(model), **count_flops(model, x1)}
    if isinstance(x1, torch.Tensor):
        result["input_shape"] = list(x1.shape[1:])
    else:
        result["input_shape"] = {k: list(v.shape[1:]) for k, v in x1.items() if isinstance(v, torch.Tensor)}
    result["seq_len"] = seq_len
    result["artifact_bytes"] = None if artifact_path is None else path_bytes(artifact_path)
    result.update({"onnx_path": None, "onnx_bytes": None, "onnx_exported": False, "onnx_exporter": None})

    old_threads = torch.get_num_threads()
    tmpdir: tempfile.TemporaryDirectory[str] | None = None
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        n_threads = torch.get_num_threads()
        result["threads"] = n_threads
        result["batch_sizes"] = sizes
        result["runtimes"] = list(runtimes)
        latency: dict[str, Any] = {}
        if "onnxruntime" in runtimes:
            if onnx_path is None:
                tmpdir = tempfile.TemporaryDirectory(prefix="condense-profile-")
                exported = export_onnx(model, x1, Path(tmpdir.name) / "model.onnx", check=False)
                ort_file = exported.path
                result["onnx_exported"] = True
                result["onnx_exporter"] = exported.exporter
            else:
                ort_file = Path(onnx_path)
                result["onnx_path"] = str(ort_file)
            session = onnx_session(ort_file, threads=n_threads)
            result["onnx_bytes"] = onnx_file_bytes(ort_file)
        for rt in runtimes:
            if rt == "torch":
                latency[rt] = _torch_latency(model, x1, sizes, warmup, repeats)
            else:
                latency[rt] = _ort_latency(session, x1, sizes, warmup, repeats)
        result["latency"] = latency
    finally:
        torch.set_num_threads(old_threads)
        if tmpdir is not None:
            tmpdir.cleanup()
    result["environment"] = environment()
    result["load"] = machine_load()  # right after the timing: a busy machine makes latency unreliable
    return result


def latency_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten `profile(...)["latency"]` into rows {runtime, batch_size, p50_ms, ...} for tables."""
    rows = []
    for rt, per_bs in report.get("latency", {}).items():
        for entry in per_bs.values():
            rows.append({"runtime": rt, **entry})
    return rows


__all__ = [
    "count_flops",
    "count_parameters",
    "cpu_name",
    "environment",
    "latency_table",
    "measure_latency",
    "path_bytes",
    "profile",
]
