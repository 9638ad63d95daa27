"""Shared settings of the Fashion-MNIST protocol benchmarks (issue 27): data, the teacher, the student.

Data: `load_dataset("fashion-mnist")`, the standard split (60k train / 10k official test; val =
6,000 images carved from the training set, stratified, seed 0), so 54,000 training images.
Teacher: zoo `cnn` width 24 (3 stages x 2 conv-BN-ReLU, 24/48/96 channels, GAP, linear; 163K
params, 16.4M MACs at 28x28). Student: zoo `cnn` width 16 (16/32/64 channels; 73K params, 7.3M
MACs), pruned further in the chain. The teacher is trained once by `fmnist_chain.py` and saved as
a condense artifact (`condense.save`); `fmnist_kd_families.py` loads it from there.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

TEACHER = {"name": "cnn", "width": 24}
STUDENT = {"name": "cnn", "width": 16}
KW = {"in_channels": 1, "image_size": 28, "num_classes": 10}
TEACHER_DIR = Path("/tmp/condense_fmnist/teacher")  # shared by the two scripts (not committed)
PUBLISHED = ("Fashion-MNIST benchmark table (Xiao et al. 2017, github.com/zalandoresearch/fashion-mnist): "
             "ResNet-18 94.9 %, a 2-conv CNN under 100K params 92.5 %, an MLP 90.0 % (test accuracy)")


def build(spec: dict[str, Any], seed: int) -> torch.nn.Module:
    from condense.models import build_model

    torch.manual_seed(seed)
    s = dict(spec)
    return build_model(s.pop("name"), **KW, **s)


def splits(limit: int | None = None) -> Any:
    from condense.data import load_dataset

    return load_dataset("fashion-mnist", seed=0, limit=limit)


def acc(model_or_path: Any, data: Any) -> float:
    """Test accuracy in % (a module, or an ONNX file run by ONNX Runtime, one thread)."""
    from condense.evaluate import evaluate

    return 100.0 * float(evaluate(model_or_path, data, threads=1)["accuracy"])


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Clock:
    """Wall and process-CPU seconds of named blocks."""

    def __init__(self) -> None:
        self.t: dict[str, dict[str, float]] = {}

    def __call__(self, name: str) -> Any:
        clock = self

        class _Block:
            def __enter__(self) -> None:
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc: Any) -> None:
                d = clock.t.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
                d["wall_s"] = round(d["wall_s"] + time.perf_counter() - self.w, 1)
                d["cpu_s"] = round(d["cpu_s"] + time.process_time() - self.c, 1)

        return _Block()


def loadavg() -> str:
    p = Path("/proc/loadavg")
    return " ".join(p.read_text().split()[:3]) if p.exists() else "?"
