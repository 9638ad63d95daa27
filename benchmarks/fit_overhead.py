"""Time `fit()` against a minimal hand-written loop on the same model, data and optimizer.

Both train the default digits teacher CNN with AdamW + cosine schedule over the same batches
(same shuffling generator), no validation, no checkpoints. Runs alternate (hand, fit, hand, ...)
so machine noise hits both equally. Reported: the ratio of best-of epoch times (the least
disturbed run of each, as timeit does) and of medians, with the load average at the end.

    python benchmarks/fit_overhead.py [--epochs 3] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from condense.data import load_dataset
from condense.data.base import iterate_batches, num_batches
from condense.models import build_model
from condense.train import SupervisedTask, TrainConfig, fit
from condense.train.optim import build_optimizer, build_scheduler


def hand_loop(model, data, cfg: TrainConfig) -> None:
    steps_per_epoch = num_batches(len(data), cfg.batch_size, cfg.drop_last)
    opt = build_optimizer(model.parameters(), cfg)
    sched = build_scheduler(opt, cfg, cfg.epochs * steps_per_epoch, steps_per_epoch)
    model.train()
    for epoch in range(cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        for batch in iterate_batches(data, cfg.batch_size, shuffle=True, generator=gen, drop_last=cfg.drop_last):
            loss = F.cross_entropy(model(batch["input"]), batch["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps other load from skewing the ratio)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset("digits", seed=0)
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, progress="off", seed=0)
    times = {"hand": [], "fit": []}
    for r in range(args.repeats + 1):  # first round is warm-up, discarded
        for kind in ("hand", "fit"):
            torch.manual_seed(r)
            model = build_model(args.model, in_channels=1, image_size=8, num_classes=10)
            t0 = time.perf_counter()
            if kind == "hand":
                hand_loop(model, splits.train, cfg)
            else:
                fit(SupervisedTask(model), splits.train, cfg)
            if r:
                times[kind].append((time.perf_counter() - t0) / args.epochs)
    hand, fitted = statistics.median(times["hand"]), statistics.median(times["fit"])
    hand_min, fit_min = min(times["hand"]), min(times["fit"])
    result = {
        "model": args.model,
        "train_samples": len(splits.train),
        "epochs": args.epochs,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "hand_epoch_s_median": round(hand, 4),
        "fit_epoch_s_median": round(fitted, 4),
        "overhead_pct_median": round(100 * (fitted / hand - 1), 2),
        "hand_epoch_s_min": round(hand_min, 4),
        "fit_epoch_s_min": round(fit_min, 4),
        "overhead_pct_best_of": round(100 * (fit_min / hand_min - 1), 2),
        "load_average": list(os.getloadavg()),
        "hand_epoch_s_all": [round(t, 4) for t in times["hand"]],
        "fit_epoch_s_all": [round(t, 4) for t in times["fit"]],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
