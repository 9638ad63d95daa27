"""Shared pieces of the published-protocol benchmarks: data, error counts, timing, the machine."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"


def setup(threads: int = 1) -> None:
    """One intra-op thread (the machine is shared); the scripts run under `nice -n 5`."""
    torch.set_num_threads(threads)


def mnist(quick: bool, limit: int | None = None) -> Any:
    """MNIST's standard split: all 60,000 training images train (no validation split is carved:
    both papers train on the 60k and report the last model on the official 10k test set), the
    10,000 test images are the test set. `quick`: the first 2,000 training images (`limit`: N)."""
    from condense.data import load_dataset

    return load_dataset("mnist", val_fraction=0.0, limit=2000 if quick else limit)


def test_errors(model: torch.nn.Module, data: Any) -> int:
    """Misclassified test images (the papers' unit), through `condense.evaluate`."""
    from condense.evaluate import evaluate

    acc = float(evaluate(model, data, topk=(1,))["accuracy"])
    return round((1.0 - acc) * len(data))


class Clock:
    """Wall and process-CPU seconds since start, and per-row spans; `over()` says when the
    wall-clock bound is spent (rows after that are skipped and marked as such)."""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def over(self) -> bool:
        return time.perf_counter() - self.t0 > self.bound_s

    def run(self, fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, {"wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(time.process_time() - c, 1)}

    def totals(self) -> dict[str, float]:
        return {"wall_s": round(time.perf_counter() - self.t0, 1), "cpu_s": round(time.process_time() - self.c0, 1)}


def machine() -> dict[str, Any]:
    from condense.evaluate.profile import environment

    return {**environment(), "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}


def gap_closed(alone: float, distilled: float, teacher: float) -> float | None:
    """Share of the teacher-student gap closed, on error counts: (alone - distilled) / (alone - teacher);
    None when the teacher is not better than the student alone (there is no gap to close)."""
    return None if alone <= teacher else (alone - distilled) / (alone - teacher)
