"""`condense demo`: the whole chain on the bundled digits data, measured.

Trains a teacher CNN, saves it as an artifact, exports ONNX (parity-checked), and measures every
model it produces the same way (accuracy on the held-out test split, parameters, bytes on disk,
FLOPs, latency in torch eager and onnxruntime). Prints a before/after table and writes
`report.json` in the run folder.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.artifacts import artifact_bytes, save
from condense.core.io import atomic_write_json
from condense.core.seed import seed_everything
from condense.data import load_dataset
from condense.data.base import Splits
from condense.distill import DistillConfig, distill_fit
from condense.evaluate import evaluate, profile
from condense.export import export_onnx
from condense.models import build_model
from condense.train import TrainConfig, train_model

DEMO_SEED = 0
LATENCY_BATCHES = (1, 256)


def measure(model: nn.Module, name: str, folder: Path, splits: Splits, *, repeats: int = 20) -> dict[str, Any]:
    """Save, export and measure one model; return its row of the before/after table."""
    save(model, folder, metrics={})
    onnx_path = folder / "model.onnx"
    exported = export_onnx(model, splits.test.inputs[:1], onnx_path)
    torch_metrics = evaluate(model, splits.test)
    onnx_metrics = evaluate(onnx_path, splits.test)
    prof = profile(model, splits.test.inputs[:1], runtimes=("torch", "onnxruntime"), batch_sizes=LATENCY_BATCHES,
                   onnx_path=onnx_path, artifact_path=folder / "model.safetensors", repeats=repeats)
    row = {
        "stage": name,
        "accuracy": torch_metrics["accuracy"],
        "onnx_accuracy": onnx_metrics["accuracy"],
        "macro_f1": torch_metrics["f1_macro"],
        "params": prof["params"],
        "nonzero_params": prof["nonzero_params"],
        "bytes_safetensors": artifact_bytes(folder / "model.safetensors"),
        "bytes_onnx": exported.bytes,
        "flops": prof["flops"],
        "macs": prof["macs"],
        "onnx_max_abs_diff": exported.max_abs_diff,
        "latency_ms": {rt: {str(bs): v["p50_ms"] for bs, v in by.items()} for rt, by in prof["latency"].items()},
        "threads": prof.get("threads"),
        "artifact": str(folder),
    }
    save(model, folder, metrics={"test": torch_metrics, "profile": prof})
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text before/after table (latency is the median in ms)."""
    batches = sorted({int(b) for r in rows for by in r["latency_ms"].values() for b in by}) or list(LATENCY_BATCHES)
    runtimes = [rt for rt in ("torch", "onnxruntime") if any(rt in r["latency_ms"] for r in rows)]
    short = {"torch": "torch", "onnxruntime": "ort"}
    head = ["stage", "acc", "params", "bytes(st)", "bytes(onnx)", "MFLOPs",
            *(f"{short[rt]} b{bs} ms" for rt in runtimes for bs in batches)]
    lines = []
    for r in rows:
        lat = r["latency_ms"]
        lines.append([
            r["stage"], f"{100 * r['accuracy']:.2f}%", f"{r['params']:,}", f"{r['bytes_safetensors']:,}",
            f"{r['bytes_onnx']:,}", f"{r['flops'] / 1e6:.2f}",
            *(f"{lat.get(rt, {}).get(str(bs), float('nan')):.3f}" for rt in runtimes for bs in batches),
        ])
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False)))  # noqa: E731
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(x) for x in lines]
    return "\n".join(out)


def run_demo(out: str | Path = "condense-demo", *, epochs: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the demo chain into the folder `out`; return the report (also written to report.json)."""
    t_start = time.perf_counter()
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    seed_everything(DEMO_SEED)
    splits = load_dataset("digits", seed=DEMO_SEED)
    say(f"[demo] digits: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, shape {splits.input_shape}")

    teacher = build_model("cnn", in_channels=1, image_size=8, num_classes=splits.num_classes)
    cfg = TrainConfig(epochs=epochs or 15, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=5e-4,
                      schedule="cosine", warmup_steps=20, seed=DEMO_SEED, progress="off",
                      checkpoint_dir=str(run / "teacher" / "checkpoint"))
    say(f"[demo] training teacher cnn ({sum(p.numel() for p in teacher.parameters()):,} params), {cfg.epochs} epochs")
    fit_result = train_model(teacher, splits.train, cfg, splits.val)
    rows = [measure(fit_result.model, "teacher", run / "teacher", splits)]
    say(f"[demo] teacher test accuracy {rows[0]['accuracy']:.4f} (best val epoch {fit_result.best_epoch})")

    # Student stage: the same small architecture trained alone and distilled from the teacher,
    # same epochs and optimizer, so the table shows what the teacher's knowledge adds.
    student_kwargs = {"in_channels": 1, "image_size": 8, "num_classes": splits.num_classes, "width": 8}
    student_cfg = cfg.replace(epochs=(epochs or 15) * 2, checkpoint_dir=None)
    torch.manual_seed(DEMO_SEED + 1)
    alone = train_model(build_model("cnn", **student_kwargs), splits.train, student_cfg, splits.val)
    rows.append(measure(alone.model, "student alone", run / "student_alone", splits))
    torch.manual_seed(DEMO_SEED + 1)
    kd_cfg = DistillConfig(alpha=0.9, temperature=4.0, train=student_cfg.replace(checkpoint_dir=str(run / "student_kd" / "checkpoint")))
    say(f"[demo] distilling a {sum(p.numel() for p in build_model('cnn', **student_kwargs).parameters()):,}-param student "
        f"(alpha {kd_cfg.alpha}, T {kd_cfg.temperature}) and training the same student alone for comparison")
    kd = distill_fit(build_model("cnn", **student_kwargs), fit_result.model, splits.train, kd_cfg, splits.val)
    rows.append(measure(kd.model, "student distilled", run / "student_kd", splits))
    say(f"[demo] student alone {rows[1]['accuracy']:.4f}, distilled {rows[2]['accuracy']:.4f}")

    report = {
        "dataset": splits.summary(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "stages": rows,
        "teacher_fit": fit_result.to_dict(),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_json(run / "report.json", report)
    if not quiet:
        print(format_table(rows))
        print(f"\nreport: {run / 'report.json'}  ({report['wall_time_s']} s)")
    return report
