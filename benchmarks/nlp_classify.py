"""A labelled text task for accuracy numbers: which standard-library package does a docstring
paragraph come from? Teacher = all-MiniLM-L6-v2 with a classification head, fine-tuned; student
= 3 of its layers (copied from the pretrained model) with a fresh head, trained alone on the
labels or distilled from the fine-tuned teacher (soft targets, Hinton et al. 2015).

Data: `stdlib-text` with `task: package`: the 8 largest top-level packages having >= 5 modules,
split BY MODULE (test modules never seen in training). Metrics on the test split: accuracy and
macro F1. Same epochs, batch, optimizer and learning rate for both students.

    python benchmarks/nlp_classify.py [--epochs 3] [--json benchmarks/results/nlp_classify.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import condense
from condense.core.io import atomic_write_json
from condense.models.hf import minilm_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="a seeded sample of paragraphs (quick checks)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "nlp_classify.json"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    folder = minilm_dir()
    splits = condense.load_dataset("stdlib-text", task="package", max_length=args.max_length, tokenizer=str(folder),
                                   limit=args.limit)
    print(f"{splits.num_classes} classes {splits.class_names}; {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test)} test paragraphs (split by module)")
    work = Path(tempfile.mkdtemp(prefix="nlp_classify_"))

    def train_cfg(name: str) -> condense.TrainConfig:
        return condense.TrainConfig(epochs=args.epochs, batch_size=32, lr=args.lr, warmup_steps=20, progress="off",
                                    checkpoint_dir=str(work / name))

    def build(layers: int | None) -> torch.nn.Module:
        torch.manual_seed(0)
        kw = {"task": "sequence-classification", "num_labels": splits.num_classes}
        return condense.build_model(f"hf:{folder}", **kw, **({} if layers is None else {"layers": layers}))

    rows, times = {}, {}
    t0 = time.perf_counter()
    teacher = condense.train_model(build(None), splits.train, train_cfg("teacher"), splits.val).model
    times["teacher_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    alone = condense.train_model(build(args.layers), splits.train, train_cfg("alone"), splits.val).model
    times["alone_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    dcfg = condense.DistillConfig(alpha=0.9, temperature=4, train=train_cfg("distilled"))
    distilled = condense.distill(build(args.layers), teacher, splits.train, dcfg, splits.val)
    times["distilled_s"] = round(time.perf_counter() - t0, 1)
    for name, m in (("teacher (6 layers)", teacher), (f"student alone ({args.layers} layers)", alone),
                    (f"student distilled ({args.layers} layers)", distilled)):
        r = condense.evaluate(m, splits.test)
        rows[name] = {"accuracy": r["accuracy"], "f1_macro": r["f1_macro"],
                      "params": sum(p.numel() for p in m.parameters())}
        print(f"{name:28s} acc {100 * r['accuracy']:.2f}%  macro F1 {100 * r['f1_macro']:.2f}%")
    t = rows["teacher (6 layers)"]["accuracy"]
    d = rows[f"student distilled ({args.layers} layers)"]["accuracy"]
    result = {"rows": rows, "times_s": times, "settings": vars(args), "classes": splits.class_names,
              "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
              "target": {"distilled_within_pt_of_teacher": 1.5, "gap_pt": round(100 * (t - d), 2),
                         "met": 100 * (t - d) <= 1.5},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "loadavg_end": os.getloadavg()},
              "wall_s": round(time.perf_counter() - t_start, 1)}
    atomic_write_json(args.json, result)
    print(result["target"], times)


if __name__ == "__main__":
    main()
