"""Epoch time of distillation with the teacher-output cache against a live teacher.

A teacher with >= 10x the student's FLOPs (default digits CNN, width 32, vs the width-8 student;
FLOPs from `condense.evaluate.count_flops`, one 1x8x8 sample) teaches soft KD (alpha 0.9, T 4)
on the full digits training split. "cached" computes the teacher's logits once (memory-mapped
NumPy shards on disk, `cache="on"`, `cache_dir`), "live" runs the teacher on every batch
(`cache="off"`). Runs alternate (cached, live, cached, ...) so machine noise hits both; the
first round is a warm-up and is discarded. The figure is the ratio of median epoch times
(`epoch_time_s` from fit's history: the training steps only, validation excluded).
Timing only: the teacher is not trained (its weights do not change the cost).

    python benchmarks/teacher_cache.py [--epochs 3] [--repeats 3] [--json benchmarks/results/teacher_cache.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from condense.data import load_dataset
from condense.distill import DistillConfig, TeacherCache, distill_fit
from condense.evaluate import count_flops
from condense.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="benchmarks/results/teacher_cache.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    splits = load_dataset("digits", seed=0)
    data = splits.train
    torch.manual_seed(0)
    teacher = build_model("cnn", in_channels=1, image_size=8, num_classes=10)
    example = data.inputs[:1]
    t_flops = count_flops(teacher, example)["flops"]
    s_flops = count_flops(build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8), example)["flops"]
    ratio = t_flops / s_flops
    if ratio < 10:
        raise SystemExit(f"teacher has only {ratio:.1f}x the student's FLOPs; the benchmark needs >= 10x")

    times: dict[str, list[float]] = {"cached": [], "live": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "teacher_cache"
        t0 = time.perf_counter()
        TeacherCache.build([teacher.eval()], data, folder=folder)
        build_s = time.perf_counter() - t0
        cache_bytes = sum(p.stat().st_size for p in folder.iterdir())
        for r in range(args.repeats + 1):
            for kind in ("cached", "live"):
                torch.manual_seed(r)
                student = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8)
                cfg = DistillConfig(
                    alpha=0.9, temperature=4.0,
                    cache="on" if kind == "cached" else "off",
                    cache_dir=str(folder) if kind == "cached" else None,
                    train={"epochs": args.epochs, "batch_size": 64, "lr": 1e-2, "progress": "off",
                           "device": "cpu", "seed": r},
                )
                res = distill_fit(student, teacher, data, cfg)
                if r:  # round 0 warms up allocators and kernels
                    times[kind] += [h["epoch_time_s"] for h in res.history]

    cached, live = statistics.median(times["cached"]), statistics.median(times["live"])
    result = {
        "teacher": "cnn width=32 (default)",
        "student": "cnn width=8",
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "teacher_flops": t_flops,
        "student_flops": s_flops,
        "flops_ratio": round(ratio, 2),
        "train_samples": len(data),
        "batch_size": 64,
        "epochs_per_run": args.epochs,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cache_build_s": round(build_s, 4),
        "cache_bytes": cache_bytes,
        "cached_epoch_s_median": round(cached, 4),
        "live_epoch_s_median": round(live, 4),
        "speedup": round(live / cached, 3),
        "cached_epoch_s_all": [round(t, 4) for t in times["cached"]],
        "live_epoch_s_all": [round(t, 4) for t in times["live"]],
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n| teacher / student FLOPs | live epoch (median) | cached epoch (median) | speed-up | one-off cache build |\n"
        f"|---|---|---|---|---|\n"
        f"| {t_flops:,} / {s_flops:,} ({ratio:.1f}x) | {live * 1000:.0f} ms | {cached * 1000:.0f} ms | "
        f"{live / cached:.2f}x | {build_s * 1000:.0f} ms |"
    )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
