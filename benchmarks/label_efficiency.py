"""Label efficiency on digits with 10 % of the training labels: does unlabelled data help a student?

Rows (the same ~18K-parameter student `cnn width=8`, the same initial weights per seed, and the
same optimizer + schedule + augmentation for every student training stage):

  (a) supervised: the student trained on the labelled 10 % only;
  (b) ssl + fine-tune: pretrained self-supervised (`condense.ssl.pretrain`) on all training
      images (labelled + unlabelled, labels never read), then fine-tuned on the labelled 10 %;
  (c) kd: a teacher (`cnn` default, ~288K) trained on the labelled 10 % distils into the student
      over all training images with label-free soft KD (alpha = 1) via `condense.distill.distill`;
  (d) ssl + kd: (b)'s pretrained student (before fine-tuning) distilled as in (c);
  (e) ssl-distill + kd (with --ssl-distill): the student first learns the teacher's embedding
      label-free (`condense.ssl.ssl_distill`: cosine + SEED), then distilled as in (c).

The split is fixed (`load_dataset("digits", labelled_fraction=0.1, seed=0)`: 129 labelled,
1166 unlabelled, 143 val, 359 test images); only the training seed varies (weight init,
batch order, augmentation and view draws). Best weights are picked on the labelled val split
in every supervised / KD stage; numbers are test accuracy. One teacher is trained per seed.

    python benchmarks/label_efficiency.py --seeds 5 --ssl-distill --json benchmarks/results/label_efficiency.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from condense.data import AugmentConfig, build_augment, load_dataset
from condense.data.base import ArrayDataset
from condense.distill import DistillConfig, distill
from condense.evaluate import evaluate
from condense.models import build_model
from condense.ssl import (
    PretrainConfig,
    SSLDistillConfig,
    knn_accuracy,
    pretrain,
    ssl_distill,
)
from condense.train import TrainConfig, train_model

ROWS = {
    "a": "(a) supervised on the 10 % labels",
    "b": "(b) SSL pretrain (all images) + fine-tune",
    "c": "(c) teacher KD over all images (label-free)",
    "d": "(d) SSL pretrain + teacher KD",
    "e": "(e) SSL-distill (embed + SEED) + teacher KD",
}


def student(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of every student stage")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--method", default="simclr", help="pretraining method: simclr | byol | mae")
    ap.add_argument("--pretrain-epochs", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=4.0, help="soft-KD temperature")
    ap.add_argument("--ssl-distill", action="store_true", help="add row (e)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    splits = load_dataset("digits", labelled_fraction=0.1, seed=0)
    assert splits.unlabelled is not None
    # every training image, labels stripped: the labelled 10 % and the unlabelled 90 %
    all_images = ArrayDataset(
        torch.cat([splits.train.inputs, splits.unlabelled.inputs]), None,
        torch.cat([splits.train.indices, splits.unlabelled.indices]),
    )
    augment_cfg = AugmentConfig(shift=1)
    augment = build_augment(augment_cfg)

    def student_cfg(seed: int) -> TrainConfig:  # one optimizer + schedule for every student stage
        return TrainConfig(epochs=100_000, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           optimizer="adamw", schedule="cosine", seed=seed, progress="off")

    def teacher_cfg(seed: int) -> TrainConfig:
        return TrainConfig(epochs=100_000, max_steps=args.teacher_steps, batch_size=args.batch_size, lr=3e-3,
                           seed=seed, progress="off")

    def pretrain_cfg(seed: int) -> PretrainConfig:
        return PretrainConfig(method=args.method, train=TrainConfig(
            epochs=args.pretrain_epochs, batch_size=128, lr=2e-3, drop_last=True, select_best="last",
            seed=seed, progress="off"))

    def kd(model: torch.nn.Module, teacher: torch.nn.Module, seed: int) -> torch.nn.Module:
        cfg = DistillConfig(alpha=1.0, temperature=args.temperature, augment=augment_cfg, train=student_cfg(seed))
        return distill(model, teacher, all_images, cfg, splits.val)

    rows = ["a", "b", "c", "d"] + (["e"] if args.ssl_distill else [])
    per_seed: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        rec: dict[str, Any] = {"seed": seed, "test_accuracy": {}, "seconds": {}}

        def timed(key: str, fn, *a, _rec=rec, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            _rec["seconds"][key] = round(time.perf_counter() - t0, 2)
            return out

        def acc(model: torch.nn.Module) -> float:
            return float(evaluate(model, splits.test)["accuracy"])

        m = timed("a", train_model, student(seed), splits.train, student_cfg(seed), splits.val, augment=augment).model
        rec["test_accuracy"]["a"] = acc(m)

        pre = timed("pretrain", pretrain, student(seed), all_images, pretrain_cfg(seed))
        rec["knn_val_accuracy_pretrained"] = knn_accuracy(pre, splits.train, splits.val)
        m = timed("b", train_model, copy.deepcopy(pre), splits.train, student_cfg(seed), splits.val, augment=augment).model
        rec["test_accuracy"]["b"] = acc(m)

        torch.manual_seed(seed)
        teacher = build_model("cnn", in_channels=1, image_size=8, num_classes=10)
        teacher = timed("teacher", train_model, teacher, splits.train, teacher_cfg(seed), splits.val, augment=augment).model
        rec["teacher_test_accuracy"] = acc(teacher)

        rec["test_accuracy"]["c"] = acc(timed("c", kd, student(seed), teacher, seed))
        rec["test_accuracy"]["d"] = acc(timed("d", kd, copy.deepcopy(pre), teacher, seed))
        if "e" in rows:
            sd_cfg = SSLDistillConfig(train=pretrain_cfg(seed).train)
            init = timed("ssl_distill", ssl_distill, student(seed), teacher, all_images, sd_cfg)
            rec["knn_val_accuracy_ssl_distilled"] = knn_accuracy(init, splits.train, splits.val)
            rec["test_accuracy"]["e"] = acc(timed("e", kd, init, teacher, seed))
        per_seed.append(rec)
        print(f"seed {seed}: " + "  ".join(f"{r}={rec['test_accuracy'][r]:.4f}" for r in rows)
              + f"  teacher={rec['teacher_test_accuracy']:.4f}  ({sum(rec['seconds'].values()):.0f}s)", flush=True)

    results = {r: summary([p["test_accuracy"][r] for p in per_seed]) for r in rows}
    gain = [p["test_accuracy"]["d"] - p["test_accuracy"]["a"] for p in per_seed]
    out = {
        "command": "python benchmarks/label_efficiency.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else (f"--{k.replace('_', '-')}" if v else "")
            for k, v in vars(args).items() if v is not None and v is not False),
        "split": {"dataset": "digits", "split_seed": 0, "labelled_fraction": 0.1, **splits.summary()},
        "rows": {r: ROWS[r] for r in rows},
        "test_accuracy": results,
        "teacher_test_accuracy": summary([p["teacher_test_accuracy"] for p in per_seed]),
        "knn_val_accuracy_pretrained": summary([p["knn_val_accuracy_pretrained"] for p in per_seed]),
        "gain_d_minus_a": {**summary(gain), "target": 0.03, "met": statistics.fmean(gain) >= 0.03},
        "per_seed": per_seed,
        "settings": {
            "student": "cnn width=8", "teacher": "cnn (default width=32)", "student_train": student_cfg(0).to_dict(),
            "teacher_train": teacher_cfg(0).to_dict(), "pretrain": pretrain_cfg(0).to_dict(),
            "augment": augment_cfg.to_dict(), "kd": {"alpha": 1.0, "temperature": args.temperature},
        },
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "env": {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads},
    }
    if "e" in rows:
        out["knn_val_accuracy_ssl_distilled"] = summary([p["knn_val_accuracy_ssl_distilled"] for p in per_seed])
    print("\n| row | test accuracy (mean ± std) |\n|---|---|")
    for r in rows:
        print(f"| {ROWS[r]} | {100 * results[r]['mean']:.1f} ± {100 * results[r]['std']:.1f} |")
    print(f"| teacher (288K, 10 % labels) | {100 * out['teacher_test_accuracy']['mean']:.1f} ± "
          f"{100 * out['teacher_test_accuracy']['std']:.1f} |")
    print(f"\n(d) - (a): {100 * out['gain_d_minus_a']['mean']:+.1f} ± {100 * out['gain_d_minus_a']['std']:.1f} points; "
          f"wall {out['wall_seconds']:.0f}s")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        tmp.replace(path)


if __name__ == "__main__":
    main()
