"""Data-free distillation on digits: a student that never sees a training image vs students that do.

Teacher: zoo `cnn` default (~288K params) trained on the digits training split. Student: `cnn`
width=8 (~18K). Rows:

* student, supervised on the real training images and labels;
* student, distilled (label-free, alpha=1, T=4) on the real training images;
* student, distilled the same way on `--samples` DeepInversion images synthesized from the
  teacher's BatchNorm statistics + target classes (`synthesize`, no training image read);
* control: distilled the same way on as many Gaussian-noise images (same clamp to the valid pixel
  range), to show what the synthesis adds.

All distillations run the same epochs with the same +-1 pixel shift augmentation (teacher and
student see the same shifted view). The clamp range is the image range [0, 1] after the
dataset's normalisation: the one fact about the data a data-free method is given (DeepInversion
likewise uses the ImageNet normalisation constants).

    python benchmarks/datafree_digits.py --seeds 0 1 2

Writes benchmarks/results/datafree_digits.json. Keep `--threads 1` on shared machines.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from condense.data import AugmentConfig, load_dataset
from condense.data.base import ArrayDataset
from condense.distill import DistillConfig, distill
from condense.distill.datafree import (
    DataFreeConfig,
    bn_statistics_loss,
    datafree_distill,
    synthesize,
)
from condense.evaluate import count_parameters, evaluate
from condense.models import build_model
from condense.train import TrainConfig, train_model

RESULTS = Path(__file__).parent / "results"


def student(seed: int) -> nn.Module:
    torch.manual_seed(1000 + seed)
    return build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8)


def acc(model: nn.Module, data: ArrayDataset) -> float:
    return float(evaluate(model, data, topk=(1,))["accuracy"])


def run_seed(seed: int, args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    splits = load_dataset("digits", seed=seed)
    test = splits.test
    torch.manual_seed(seed)
    teacher = build_model("cnn", in_channels=1, image_size=8, num_classes=10)
    tcfg = TrainConfig(epochs=15, lr=3e-3, seed=seed, progress="off")
    teacher = train_model(teacher, splits.train, tcfg, splits.val).model.eval()
    r = {"teacher (real data)": acc(teacher, test)}

    scfg = TrainConfig(epochs=args.epochs, lr=3e-3, seed=seed, progress="off", select_best="last")
    r["student, supervised on real data"] = acc(train_model(student(seed), splits.train, scfg).model, test)
    dcfg = DistillConfig(alpha=1.0, temperature=4.0, augment=AugmentConfig(shift=1), train=scfg)
    r["student, distilled on real images"] = acc(distill(student(seed), teacher, splits.train.without_labels(), dcfg), test)

    mu, sd = splits.info["normalize"]["mean"][0], splits.info["normalize"]["std"][0]
    clamp = [(0.0 - mu) / sd, (1.0 - mu) / sd]
    cfg = DataFreeConfig(input_shape=[1, 8, 8], num_samples=args.samples, batch_size=256, iterations=args.iterations,
                         lr=0.25, bn_weight=0.3, jitter=0, clamp=clamp, seed=seed, distill=dcfg.to_dict())
    t0 = time.perf_counter()
    syn = synthesize(teacher, cfg)
    synth_s = time.perf_counter() - t0
    r["student, data-free (DeepInversion images)"] = acc(datafree_distill(student(seed), teacher, cfg, synthetic=syn.data), test)

    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(args.samples, 1, 8, 8, generator=gen).clamp(clamp[0], clamp[1])
    noise_set = ArrayDataset(noise, None, torch.arange(args.samples))
    r["control: distilled on Gaussian noise"] = acc(datafree_distill(student(seed), teacher, cfg, synthetic=noise_set), test)

    s = syn.summary()
    stats = {
        "bn_loss_real_train_images": bn_statistics_loss(teacher, splits.train.inputs),
        "bn_loss_gaussian_noise": bn_statistics_loss(teacher, noise),
        "bn_loss_synthesized": bn_statistics_loss(teacher, syn.data.inputs),
        "teacher_agrees_with_target_class": s["teacher_agreement"],
        "synthesis_s": synth_s,
    }
    return r, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "datafree_digits.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows: dict[str, list[float]] = {}
    stats: dict[str, list[float]] = {}
    for seed in args.seeds:
        ts = time.perf_counter()
        r, st = run_seed(seed, args)
        for k, v in r.items():
            rows.setdefault(k, []).append(v)
        for k, v in st.items():
            stats.setdefault(k, []).append(v)
        print(f"seed {seed} ({time.perf_counter() - ts:.0f}s): " + ", ".join(f"{k}={v:.4f}" for k, v in {**r, **st}.items()),
              flush=True)

    def ms(xs: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}

    out = {
        "per_seed": rows,
        "summary": {k: ms(v) for k, v in rows.items()},
        "synthesis": {k: ms(v) for k, v in stats.items()},
        "params": {"teacher": count_parameters(build_model("cnn", in_channels=1, image_size=8, num_classes=10))["params"],
                   "student": count_parameters(student(0))["params"]},
        "settings": {"samples": args.samples, "iterations": args.iterations, "distill_epochs": args.epochs,
                     "lr": 0.25, "bn_weight": 0.3, "jitter": 0, "augment_shift": 1, "temperature": 4.0},
        "wall_s": time.perf_counter() - t0,
        "env": {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
                "seeds": args.seeds},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"{out['wall_s']:.0f}s -> {args.out}")
    for k, v in out["summary"].items():
        print(f"  {k:45s} {v['mean']:.4f} ± {v['std']:.4f}")
    for k, v in out["synthesis"].items():
        print(f"  {k:45s} {v['mean']:.4f} ± {v['std']:.4f}")


if __name__ == "__main__":
    main()
