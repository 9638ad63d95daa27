"""Latency that a report can defend: files timed against their reference in one interleaved pass.

Timing each model on its own, one after the other, lets a change of machine load between them
bias every ratio: one demo report timed the same model at 0.5 ms and 192 ms and called the same
int8 file "3.52x slower" in one row and "1.19x slower" in the next (issue 27). Here:

- `interleaved_latency` runs every runner on the same feed in each round, in a new random order,
  garbage collection paused, so load hits them all alike; it returns the median (and p90) per
  runner;
- `judge` calls a measurement unreliable when any runner's p90 is more than `MAX_SPREAD` times
  its median, or the machine was oversubscribed (1-minute load average above the CPU count);
- `timed_pass` measures, and measures once more when the first pass was unreliable, before any
  ratio is stated; the flag and its reasons travel with the numbers;
- `onnx_latency_pass` is that for ONNX files in ONNX Runtime at several batch sizes: the recipe
  runner times every stage's deployed file against the run's first model with it.

`interleaved_latency`, `judge` and `timed_pass` are plain Python (the runners they time may be
anything); `onnx_latency_pass` reads its files through `condense.export.onnx`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from condense.core.errors import ConfigError
from condense.export.onnx import onnx_session, ort_input
from condense.models.signature import repeat_batch, slice_batch

#: p90 / p50 above this marks a timing unreliable (scheduling noise, another process's bursts)
MAX_SPREAD = 2.0


def interleaved_latency(
    runs: Mapping[str, Callable[[Any], Any]],
    feeds: Sequence[Any],
    *,
    repeats: int,
    warmup: int = 3,
    seed: int = 0,
    timer: Callable[[], float] | None = None,
) -> dict[str, dict[str, float]]:
    """Median wall and calling-thread CPU milliseconds, p90 and the fastest wall time of each
    runner `runs[name](feed)`.

    Every round runs all runners on the same feed (feeds rotate round by round) in a new random
    order, with garbage collection paused, so load from other processes on a shared machine hits
    them all alike (timing one after the other lets a change of load bias the ratios). With one
    intra-op thread, ORT computes on the calling thread, so CPU time is that run's own work.
    `timer` (seconds, default `time.perf_counter`) is for tests.
    """
    import gc
    import random
    import statistics
    import time

    if repeats < 1 or warmup < 0 or not feeds:
        raise ConfigError(f"interleaved_latency: repeats >= 1, warmup >= 0 and feeds are needed, got {repeats}, {warmup}, "
                          f"{len(feeds)} feeds")
    clock = timer or time.perf_counter
    for fn in runs.values():
        for i in range(warmup):
            fn(feeds[i % len(feeds)])
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    order, rng = list(runs), random.Random(seed)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            feed = feeds[r % len(feeds)]
            rng.shuffle(order)
            for k in order:
                c0, t0 = time.thread_time(), clock()
                runs[k](feed)
                t1, c1 = clock(), time.thread_time()
                wall[k].append((t1 - t0) * 1e3)
                cpu[k].append((c1 - c0) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {k: {"wall_ms": float(statistics.median(wall[k])), "cpu_ms": float(statistics.median(cpu[k])),
                "min_ms": float(min(wall[k])), "p90_ms": _percentile(wall[k], 90)}
            for k in runs}


def _percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def machine_load() -> dict[str, Any]:
    """The 1-minute load average and the CPU count (load None where the OS does not say)."""
    try:
        load1: float | None = float(os.getloadavg()[0])
    except (AttributeError, OSError):
        load1 = None
    return {"load_1min": load1, "cpus": os.cpu_count() or 1}


def judge(timings: Mapping[str, Mapping[str, float]], load: Mapping[str, Any] | None = None,
          max_spread: float = MAX_SPREAD) -> list[str]:
    """Why `timings` (`interleaved_latency` output) cannot be trusted; empty when they can."""
    reasons = []
    for k, t in timings.items():
        p50, p90 = t.get("wall_ms"), t.get("p90_ms")
        if p50 and p90 is not None and p90 / p50 > max_spread:
            reasons.append(f"{k}: p90 {p90:.3f} ms is {p90 / p50:.1f}x the median {p50:.3f} ms (more than {max_spread:g}x)")
    if load and load.get("load_1min") is not None and load["load_1min"] > load["cpus"]:
        reasons.append(f"machine load {load['load_1min']:.2f} (1-minute average) is above its {load['cpus']} CPUs: "
                       "other processes were competing for the cores")
    return reasons


def timed_pass(
    runs: Mapping[str, Callable[[Any], Any]],
    feeds: Sequence[Any],
    *,
    reference: str,
    repeats: int,
    warmup: int = 3,
    seed: int = 0,
    retries: int = 1,
    timer: Callable[[], float] | None = None,
    load: Callable[[], Mapping[str, Any]] = machine_load,
) -> dict[str, Any]:
    """Time `runs` interleaved and state each one's ratio to `reference` (median / median).

    An unreliable pass (`judge`) is measured again, up to `retries` times, before any ratio is
    given; the last pass is returned with `reliable`, its `reasons` and every `attempts` record.
    """
    if reference not in runs:
        raise ConfigError(f"timed_pass: the reference {reference!r} is not among the runs {sorted(runs)}")
    attempts: list[dict[str, Any]] = []
    for i in range(retries + 1):
        t = interleaved_latency(runs, feeds, repeats=repeats, warmup=warmup, seed=seed + i, timer=timer)
        reasons = judge(t, load())
        attempts.append({"timings": t, "reasons": reasons})
        if not reasons:
            break
    last = attempts[-1]
    ref = last["timings"][reference]["wall_ms"]
    ratios = {k: (v["wall_ms"] / ref if ref > 0 else None) for k, v in last["timings"].items()}
    return {"reference": reference, "timings": last["timings"], "ratios": ratios, "reliable": not last["reasons"],
            "reasons": last["reasons"], "measured": len(attempts),
            "earlier_reasons": [r for a in attempts[:-1] for r in a["reasons"]]}


def onnx_latency_pass(
    files: Mapping[str, str | os.PathLike[str]],
    reference: str,
    example: Any,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int | None = None,
    repeats: int = 20,
    warmup: int = 5,
    retries: int = 1,
) -> dict[str, Any]:
    """Time every ONNX file of `files` (name -> path) against `files[reference]` in ONNX Runtime,
    interleaved, at each batch size (the first sample of `example`, repeated).

    Returns {"reference", "threads", "files", "batches": {bs: `timed_pass` output}, "reliable",
    "warnings"}: one warning per unreliable batch size (after its re-measure) and per file that
    could not be timed at a batch size (a fixed batch axis).
    """
    if reference not in files:
        raise ConfigError(f"onnx_latency_pass: the reference {reference!r} is not among the files {sorted(files)}")
    sessions = {name: onnx_session(path, threads) for name, path in files.items()}
    x1 = slice_batch(example, 1)
    if isinstance(x1, dict):
        x1 = {k: v for k, v in x1.items() if k not in ("target", "index")}
    out: dict[str, Any] = {"reference": reference, "threads": threads,
                           "files": {k: Path(p).name for k, p in files.items()}, "batches": {}, "warnings": []}
    for i, bs in enumerate(int(b) for b in batch_sizes):
        runs = {}
        for name, sess in sessions.items():
            dim = sess.get_inputs()[0].shape[0]
            if isinstance(dim, int) and dim > 0 and dim != bs:
                out["warnings"].append(f"latency pass: {name} has a fixed batch size of {dim}; not timed at batch {bs}")
                continue
            feed = ort_input(sess, repeat_batch(x1, bs))
            runs[name] = (lambda _f, s=sess, f=feed: s.run(None, f))
        if reference not in runs:
            continue
        res = timed_pass(runs, [None], reference=reference, repeats=repeats, warmup=warmup, seed=i, retries=retries)
        out["batches"][bs] = res
        if not res["reliable"]:
            out["warnings"].append(
                f"latency at batch {bs} is unreliable after {res['measured']} interleaved passes ("
                + "; ".join(res["reasons"]) + "): its ratios are stated, but no gain or loss should be read from them")
    out["reliable"] = all(b["reliable"] for b in out["batches"].values())
    out["load"] = machine_load()
    return out


__all__ = ["MAX_SPREAD", "interleaved_latency", "judge", "machine_load", "onnx_latency_pass", "timed_pass"]
