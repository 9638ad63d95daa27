"""Per-call overheads condense removed from its own paths (issue 28), each measured both ways.

- `item_seed`: one epoch over a user's map-style Dataset (2,000 items of 3x32x32) through
  condense's loader, whose per-item random state seeds torch's CPU generator (now) or calls
  `torch.manual_seed` (before: it also queues a seed for every device type with a stack trace).
- `stdlib_read`: reading the standard library's docstring corpus (`stdlib_paragraphs`), now
  against the old walk (`rglob` over everything, site-packages included, then `ast.walk`).
- `onnx_export`: three `export_onnx` calls of a small MLP with torch.onnx's op registry shared
  within `export_onnx` (now) and rebuilt on every export (before).

CPU seconds (`time.process_time`), best of `--repeats`, one torch thread.

    python benchmarks/overheads.py   # -> benchmarks/results/overheads.json
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from condense.core.io import atomic_write_text
from condense.data import items, stdlib_text
from condense.data.loader import as_source
from condense.export import onnx as onnx_export

OUT = Path(__file__).resolve().parent / "results" / "overheads.json"


class Images(Dataset):
    def __len__(self) -> int:
        return 2000

    def __getitem__(self, i: int):
        return torch.rand(3, 32, 32), i % 10


def _old_enter(self) -> None:
    self._torch, self._py, self._np = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    torch.manual_seed(self.seed)
    random.seed(self.seed)
    np.random.seed(self.seed % (2**32))


def _old_files(root: Path, skip: frozenset[str]) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def item_seed(repeats: int) -> dict:
    src = as_source(Images())

    def epoch() -> None:
        for _ in src.batches(64, shuffle=True, seed=0, epoch=0):
            pass

    now = best(epoch, repeats)
    with mock.patch.object(items._RandomState, "__enter__", _old_enter):
        before = best(epoch, repeats)
    return {"items": 2000, "before_cpu_s": round(before, 3), "now_cpu_s": round(now, 3)}


def stdlib_read(repeats: int) -> dict:
    def read() -> None:
        stdlib_text._stdlib_paragraphs.cache_clear()
        stdlib_text.stdlib_paragraphs()

    now = best(read, repeats)
    with mock.patch.object(stdlib_text, "_python_files", _old_files), \
            mock.patch.object(stdlib_text, "_statements", ast.walk):
        before = best(read, repeats)
    return {"paragraphs": len(stdlib_text.stdlib_paragraphs()), "before_cpu_s": round(before, 3), "now_cpu_s": round(now, 3)}


def onnx_exports(repeats: int) -> dict:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.zeros(1, 64)
    folder = Path(tempfile.mkdtemp())
    onnx_export.export_onnx(model, x, folder / "warm.onnx")  # imports and first-use costs out of the way

    def three() -> None:
        for i in range(3):
            onnx_export.export_onnx(model, x, folder / f"m{i}.onnx")

    now = best(three, repeats)
    with mock.patch.object(onnx_export, "shared_torchlib_registry", contextlib.nullcontext):
        before = best(three, repeats)
    return {"exports": 3, "before_cpu_s": round(before, 3), "now_cpu_s": round(now, 3)}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"benchmark": "overheads", "torch": torch.__version__, "machine": platform.machine(),
              "cpu": _cpu_name(), "threads": 1, "repeats": args.repeats,
              "item_seed": item_seed(args.repeats), "stdlib_read": stdlib_read(args.repeats),
              "onnx_export": onnx_exports(args.repeats)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
