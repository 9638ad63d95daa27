"""How long should a recovery after a structural edit train by default? (issue 28's review)

A user's own network (a hand-written residual CNN, not from condense's zoo) is trained on
scikit-learn digits with `TrainConfig()`, then edited with each method's defaults and recovered
with `RecoverConfig()` as it is now and as it was before:

- old: a fixed 5 epochs (`TrainConfig(epochs=5, lr=1e-3, select_best="last")`): 100 optimizer
  steps on 1,295 digits;
- new (`RecoverConfig()`): 5 epochs stretched to at least 500 optimizer steps (`RECOVER_TRAIN`);
  on data with 100+ batches an epoch (MNIST: 860) the two are the same 5 epochs.

Edits that cost accuracy, so recovery has work to do: `prune_and_recover(model, {"method":
"channel", "ratio": 0.75})` (three quarters of the channels removed, L1 importance, the default)
and `reduce_depth_and_recover(model, {"drop": 2})` (two of the three residual blocks removed, the
least important by measurement). Per seed S the split is `seed=S` and every training seed S.

    python benchmarks/recovery_length.py --seeds 3   # -> benchmarks/results/recovery_length.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import condense
from condense.core.io import atomic_write_text
from condense.lowrank.recover import reduce_depth_and_recover
from condense.prune.recover import prune_and_recover
from condense.train import TrainConfig
from condense.train.recover import RecoverConfig

OUT = Path(__file__).resolve().parent / "results" / "recovery_length.json"


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResCNN(nn.Module):
    """A user's residual CNN for 8x8 digits: stem, three identity-shortcut blocks, linear head."""

    def __init__(self, c: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(Block(c), Block(c), Block(c))
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def run(seed: int) -> dict:
    splits = condense.load_dataset("digits", seed=seed)
    torch.manual_seed(seed)
    quiet = {"progress": "off", "seed": seed}
    dense = condense.train_model(ResCNN(), splits.train, TrainConfig(**quiet), splits.val).model.eval()
    acc = lambda m: float(condense.evaluate(m, splits.test)["accuracy"])  # noqa: E731
    example = condense.example_inputs(splits.test, 1)
    old = RecoverConfig(train=TrainConfig(epochs=5, lr=1e-3, select_best="last", **quiet))
    new = RecoverConfig(train={**quiet})  # a partial mapping: RECOVER_TRAIN fills in the rest
    row: dict = {"seed": seed, "dense": acc(dense)}
    for name, rcfg in (("old", old), ("new", new)):
        t0 = time.process_time()
        pruned, info = prune_and_recover(copy.deepcopy(dense), {"method": "channel", "ratio": 0.75}, rcfg,
                                         splits.train, splits.val, example_inputs=example)
        row[f"prune_{name}"] = acc(pruned)
        row[f"prune_{name}_val_edited_bn"] = info["val"].get("edited_bn_recalibrated")
        row[f"prune_{name}_steps"] = info["fit"]["steps"] if isinstance(info.get("fit"), dict) else None
        shallow, _ = reduce_depth_and_recover(copy.deepcopy(dense), {"drop": 2}, rcfg, splits.train, splits.val)
        row[f"depth_{name}"] = acc(shallow)
        row[f"{name}_cpu_s"] = round(time.process_time() - t0, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for s in range(args.seeds):
        rows.append(run(s))
        print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k not in ("seed",) and not k.endswith(("_steps", "_cpu_s"))]
    summary = {k: {"mean": statistics.mean(r[k] for r in rows),
                   "std": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0} for k in keys}
    result = {"benchmark": "recovery_length", "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "threads": 1, "rows": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
