"""Knowledge-distillation benchmark on digits with 30 % of the training labels (issue 3).

Data: `load_dataset("digits", seed=0, labelled_fraction=0.3)`, the SAME split for every seed:
387 labelled training images, 908 unlabelled ones (the other 70 %), 143 val, 359 test. The seed
changes only the model initialisation and the batch order (`TrainConfig.seed`); inside one seed
every student row starts from the same initial weights (paired comparison).

Every row (teachers included) trains with the same optimizer and length: AdamW, lr 3e-3,
weight decay 5e-4, cosine schedule, batch 64 with `drop_last` (387 = 6 x 64 + 3: a 3-image last
batch wrecks BatchNorm, see docs/distillation.md), 30 epochs, last weights (no selection on val).
A row whose training set is the 1,295-image transfer set (labelled + unlabelled images, labels
dropped) takes 3.3x more steps per epoch; that is the point of a transfer set. The optional
`*_long` rows (not in the default set) train 3x longer, for consistent-view KD and its baseline.

Teachers (trained once per seed, reused, teacher outputs cached on disk per seed and feature set):
cnn (width 32, ~288K params) for every single-teacher row; resnet (depth 8, width 16, ~78K) and
vgg ("small", ~1.1M) join it for the multi-teacher rows. Student: cnn width 8 (~18K params).
Cross-architecture row: resnet depth 20 width 16 (~270K) teaches mobilenetv2 width_mult 0.1 (~99K;
its 1280-channel head and 8x8 maps make it slow on CPU, so this row runs `--cross-seeds` seeds).

    python benchmarks/kd_digits.py                      # the table (5 seeds; 443 s wall on 2 shared cores)
    python benchmarks/kd_digits.py --seeds 3 --rows alone_long,soft_kd_long,label_free_long,consistent_long \
        --json benchmarks/results/kd_digits_long.json   # 3x longer schedule, with its own baseline
    python benchmarks/kd_digits.py --probe --seeds 2    # the slow / weak soft-KD investigation
    python benchmarks/kd_digits.py --seeds 1 --rows alone,soft_kd   # a quick subset

Writes benchmarks/results/kd_digits.json (or kd_digits_probe.json) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from condense.data import load_dataset
from condense.data.base import ArrayDataset
from condense.distill import DistillConfig, distill, distill_fit
from condense.evaluate import evaluate
from condense.models import build_model
from condense.train.config import TrainConfig
from condense.train.fit import train_model

RESULTS = Path(__file__).resolve().parent / "results"

# Feature-loss weights are the ones of the CRD authors' benchmark code (RepDistiller), where each
# feature loss is added to plain cross-entropy: `CE + beta * L_feat` (no soft KD term).
HINT = {"name": "fitnet", "weight": 100.0, "student_layer": "features.1", "teacher_layer": "features.1"}
AT = [{"name": "attention", "weight": 1000.0, "student_layer": f"features.{i}", "teacher_layer": f"features.{i}"}
      for i in (0, 1)]
EMB = {"student_layer": "flatten", "teacher_layer": "flatten"}  # penultimate embeddings (32-d / 128-d)
CE = {"name": "ce", "weight": 1.0}
SOFT = [{"name": "soft_kd", "weight": 0.9, "temperature": 4.0}, {"name": "ce", "weight": 0.1}]


def row_specs(n_data: int) -> dict[str, dict[str, Any]]:
    """name -> {label, teachers, data ('train' | 'transfer'), config (DistillConfig kwargs) or None}."""
    crd = {"name": "crd", "weight": 0.8, **EMB, "n_data": n_data, "feat_dim": 64, "n_negatives": 1024}
    single, multi = ["cnn"], ["cnn", "resnet", "vgg"]
    r: dict[str, dict[str, Any]] = {
        "soft_kd": ("soft KD (Hinton: 0.9 KD(T=4) + 0.1 CE)", single, "train", {"alpha": 0.9, "temperature": 4.0}),
        "hard_kd": ("hard KD (0.5 CE(teacher argmax) + 0.5 CE)", single, "train", {"alpha": 0.5, "hard": True}),
        "label_free": ("label-free KD (alpha=1, T=4) on labelled+unlabelled images", single, "transfer",
                       {"alpha": 1.0, "temperature": 4.0}),
        "dkd": ("DKD (CE + DKD a=1 b=8 T=4)", single, "train",
                {"losses": [CE, {"name": "dkd", "alpha": 1.0, "beta": 8.0, "temperature": 4.0}]}),
        "fitnet": ("FitNets (CE + 100 hint, features.1, 1x1-conv adapter)", single, "train", {"losses": [CE, HINT]}),
        "attention": ("attention transfer (CE + 1000 AT, features.0/1)", single, "train", {"losses": [CE, *AT]}),
        "rkd": ("RKD (CE + RKD 25 dist + 50 angle, penultimate)", single, "train",
                {"losses": [CE, {"name": "rkd", "weight": 1.0, **EMB}]}),
        "pkt": ("PKT (CE + 30000 PKT, penultimate)", single, "train",
                {"losses": [CE, {"name": "pkt", "weight": 30000.0, **EMB}]}),
        "crd": ("CRD (CE + 0.8 CRD, penultimate)", single, "train", {"losses": [CE, crd]}),
        "crd_kd": ("CRD + soft KD (0.9 KD + 0.1 CE + 0.8 CRD)", single, "train", {"losses": [*SOFT, crd]}),
        "multi_mean": ("multi-teacher soft KD, mean (cnn+resnet+vgg)", multi, "train",
                       {"alpha": 0.9, "temperature": 4.0, "teacher_mix": "mean"}),
        "multi_conf": ("multi-teacher soft KD, confidence (cnn+resnet+vgg)", multi, "train",
                       {"alpha": 0.9, "temperature": 4.0, "teacher_mix": "confidence"}),
        "consistent": ("consistent-view KD (alpha=1, shift 1 + mixup 0.4, transfer set)", single, "transfer",
                       {"alpha": 1.0, "temperature": 4.0, "augment": {"shift": 1}, "mixup": 0.4}),
    }
    cv = r["consistent"][3]
    r["alone_long"] = ("student alone, 3x epochs (CE)", single, "train", None)
    r["consistent_long"] = ("consistent-view KD, 3x epochs", single, "transfer", cv)
    r["label_free_long"] = ("label-free KD (alpha=1, T=4), 3x epochs", single, "transfer", r["label_free"][3])
    r["soft_kd_long"] = ("soft KD (0.9 KD(T=4) + 0.1 CE), 3x epochs", single, "train", r["soft_kd"][3])
    out = {k: {"label": v[0], "teachers": v[1], "data": v[2], "config": v[3]} for k, v in r.items()}
    for k in ("alone_long", "consistent_long", "label_free_long", "soft_kd_long"):
        out[k]["epochs_factor"] = 3
    out["cross_arch"] = {
        "label": "cross-arch: resnet-20 -> mobilenetv2 0.1 (0.9 KD + 0.1 CE + 100 hint features.14->features.1)",
        "teachers": ["resnet20"], "data": "train", "student": "mbv2",
        "config": {"losses": [*SOFT, {"name": "fitnet", "weight": 100.0, "student_layer": "features.14",
                                      "teacher_layer": "features.1"}]},
    }
    return out


MODELS: dict[str, dict[str, Any]] = {
    "cnn": {"name": "cnn"},
    "resnet": {"name": "resnet", "depth": 8, "width": 16},
    "vgg": {"name": "vgg", "cfg": "small"},
    "resnet20": {"name": "resnet", "depth": 20, "width": 16},
    "student": {"name": "cnn", "width": 8},
    "student4": {"name": "cnn", "width": 4},
    "mbv2": {"name": "mobilenetv2", "width_mult": 0.1},
}


def build(kind: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = dict(MODELS[kind])
    return build_model(spec.pop("name"), in_channels=1, image_size=8, num_classes=10, **spec)


def acc(model: torch.nn.Module, data: ArrayDataset) -> float:
    return float(evaluate(model, data, topk=(1,))["accuracy"])


def ensemble_acc(teachers: list[torch.nn.Module], data: ArrayDataset) -> float:
    with torch.no_grad():
        probs = sum(torch.softmax(t.eval()(data.inputs), dim=1) for t in teachers)
    return float((probs.argmax(1) == data.targets).float().mean())


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


# -- the table ----------------------------------------------------------------------------------
def run_table(args: argparse.Namespace) -> dict[str, Any]:
    splits = load_dataset("digits", seed=0, labelled_fraction=0.3)
    train, unl = splits.train, splits.unlabelled
    assert unl is not None
    transfer = ArrayDataset(torch.cat([train.inputs, unl.inputs]), None, torch.cat([train.indices, unl.indices]))
    n_data = 1 + max(int(d.indices.max()) for d in (train, unl, splits.val, splits.test))
    specs = row_specs(n_data)
    wanted = set(args.rows.split(",")) if args.rows else {k for k, s in specs.items() if "epochs_factor" not in s}
    tc = dict(epochs=args.epochs, lr=args.lr, optimizer="adamw", weight_decay=5e-4, schedule="cosine",
              batch_size=64, drop_last=True, select_best="last", progress="off", device="cpu")
    acc_by: dict[str, list[float]] = {}
    secs: dict[str, float] = {}
    t_start, cpu_start = time.perf_counter(), time.process_time()

    def record(key: str, value: float, t0: float) -> None:
        acc_by.setdefault(key, []).append(value)
        secs[key] = secs.get(key, 0.0) + time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="kd_digits_cache_") as cache_root:
        for seed in range(args.seeds):
            cfg_train = TrainConfig(**tc, seed=seed)
            need = {"cnn"} | {t for k, s in specs.items() if k in wanted for t in s["teachers"]
                              if k != "cross_arch" or seed < args.cross_seeds}
            teachers: dict[str, torch.nn.Module] = {}
            for name in ("cnn", "resnet", "vgg", "resnet20"):
                if name in need:
                    t0 = time.perf_counter()
                    teachers[name] = build(name, seed)
                    train_model(teachers[name], train, cfg_train)
                    record(f"teacher_{name}", acc(teachers[name], splits.test), t0)
            if {"cnn", "resnet", "vgg"} <= teachers.keys():
                acc_by.setdefault("ensemble", []).append(ensemble_acc([teachers[n] for n in ("cnn", "resnet", "vgg")], splits.test))
            t0 = time.perf_counter()
            alone = build("student", seed)
            train_model(alone, train, cfg_train)
            record("alone", acc(alone, splits.test), t0)
            for key, spec in specs.items():
                if key not in wanted:
                    continue
                if key == "cross_arch" and seed >= args.cross_seeds:
                    continue
                student_kind = spec.get("student", "student")
                if student_kind == "mbv2":
                    t0 = time.perf_counter()
                    m = build("mbv2", seed)
                    train_model(m, train, cfg_train)
                    record("mbv2_alone", acc(m, splits.test), t0)
                t0 = time.perf_counter()
                row_train = cfg_train.replace(epochs=cfg_train.epochs * spec.get("epochs_factor", 1))
                if spec["config"] is None:  # a supervised baseline
                    m = build(student_kind, seed)
                    train_model(m, train, row_train)
                    record(key, acc(m, splits.test), t0)
                    continue
                data = transfer if spec["data"] == "transfer" else train
                t_layers = sorted({s.get("teacher_layer", "") for s in spec["config"].get("losses", [])} - {""})
                cache_dir = Path(cache_root) / f"s{seed}-{'+'.join(spec['teachers'])}-{spec['data']}-{'+'.join(t_layers)}"
                cfg = DistillConfig(**spec["config"], cache_dir=str(cache_dir), train=row_train)
                student = distill(build(student_kind, seed), [teachers[n] for n in spec["teachers"]], data, cfg)
                record(key, acc(student, splits.test), t0)
            print(f"seed {seed} done ({time.perf_counter() - t_start:.0f} s): "
                  + ", ".join(f"{k}={v[-1]:.3f}" for k, v in acc_by.items()), flush=True)

    rows = summarise(acc_by, secs, specs)
    return {
        "benchmark": "kd_digits",
        "command": args.command,
        "data": {"dataset": "digits", "split_seed": 0, "labelled_fraction": 0.3, "train_labelled": len(train),
                 "unlabelled": len(unl), "transfer_set": len(transfer), "val": len(splits.val), "test": len(splits.test)},
        "seeds": list(range(args.seeds)),
        "seed_changes": "model initialisation and batch order (TrainConfig.seed); the data split is fixed (seed 0)",
        "train": tc,
        "models": {k: {**v, "params": sum(p.numel() for p in build(k, 0).parameters())} for k, v in MODELS.items()},
        "cross_arch_seeds": list(range(min(args.cross_seeds, args.seeds))),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "cpu_s": round(time.process_time() - cpu_start, 1),
        "rows": rows,
        "accuracy_by_seed": acc_by,
    }


def summarise(acc_by: dict[str, list[float]], secs: dict[str, float], specs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    t_mean = mean_std(acc_by["teacher_cnn"])[0]
    a_mean = mean_std(acc_by["alone"])[0]
    labels = {"teacher_cnn": "teacher: cnn width 32", "teacher_resnet": "teacher: resnet depth 8 width 16",
              "teacher_vgg": "teacher: vgg small", "teacher_resnet20": "cross-arch teacher: resnet depth 20 width 16",
              "ensemble": "teacher ensemble cnn+resnet+vgg (reference, not a student)",
              "alone": "student alone (cnn width 8, CE)", "mbv2_alone": "mobilenetv2 0.1 alone (CE)"}
    out = []
    for key, accs in acc_by.items():
        m, s = mean_std(accs)
        row: dict[str, Any] = {"row": key, "label": labels.get(key) or specs[key]["label"], "n": len(accs),
                               "mean": m, "std": s, "wall_s": round(secs.get(key, 0.0), 1)}
        if key == "cross_arch":  # its own teacher (resnet) and its own baseline (mobilenetv2 alone)
            base, top = mean_std(acc_by["mbv2_alone"])[0], mean_std(acc_by["teacher_resnet20"])[0]
            diffs = [a - b for a, b in zip(accs, acc_by["mbv2_alone"], strict=False)]
        elif key.endswith("_long") and key != "alone_long" and "alone_long" in acc_by:
            base, top = mean_std(acc_by["alone_long"])[0], t_mean  # the baseline at the same long schedule
            diffs = [a - b for a, b in zip(accs, acc_by["alone_long"], strict=False)]
        elif key not in ("mbv2_alone",) and not key.startswith("teacher_") and key != "ensemble":
            base, top = a_mean, t_mean
            diffs = [a - b for a, b in zip(accs, acc_by["alone"], strict=False)]
        else:
            base = top = None
            diffs = []
        if base is not None and top is not None and top != base:
            row["gap_closed"] = (m - base) / (top - base)
        if diffs and key not in ("alone",):
            row["vs_alone_mean"], row["vs_alone_std"] = mean_std(diffs)
            row["wins"] = sum(d > 0 for d in diffs)
        out.append(row)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| row | test acc (mean ± std) | n | Δ vs alone, paired (wins) | gap closed |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        delta = f"{100 * r['vs_alone_mean']:+.2f} ± {100 * r['vs_alone_std']:.2f} ({r['wins']}/{r['n']})" if "vs_alone_mean" in r else ""
        gap = f"{100 * r['gap_closed']:.0f} %" if "gap_closed" in r else ""
        lines.append(f"| {r['label']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {r['n']} | {delta} | {gap} |")
    return "\n".join(lines)


# -- the slow / weak soft-KD investigation --------------------------------------------------------
def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Width-4 / width-8 students: soft KD vs alone over lr, epochs, drop_last, T, alpha, T^2 and cache."""
    splits = load_dataset("digits", seed=0, labelled_fraction=0.3)
    train = splits.train
    out: dict[str, Any] = {"benchmark": "kd_digits_probe", "command": args.command, "runs": []}
    t_start, cpu_start = time.perf_counter(), time.process_time()
    kd = {"alpha": 0.9, "temperature": 4.0}
    for seed in range(args.seeds):
        base = dict(epochs=30, lr=3e-3, batch_size=64, drop_last=True, select_best="last", progress="off",
                    device="cpu", seed=seed)
        teachers = {}
        for key, t in (("drop_last=True", {"drop_last": True}), ("drop_last=False", {"drop_last": False}),
                       ("batch 43", {"drop_last": False, "batch_size": 43})):  # 387 = 9 x 43: no remainder
            teachers[key] = build("cnn", seed)
            train_model(teachers[key], train, TrainConfig(**{**base, **t}))
            out["runs"].append({"seed": seed, "student": "teacher", "what": f"teacher lr 0.003 30 ep {key}",
                                "test": acc(teachers[key], splits.test)})
        grid: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = []
        for kind in ("student4", "student"):
            for lr, ep, dl in ((3e-3, 30, False), (3e-3, 30, True), (1e-2, 30, True), (3e-3, 90, True)):
                t = {"lr": lr, "epochs": ep, "drop_last": dl}
                where = f"lr {lr:g} {ep} ep drop_last={dl}"
                grid.append((kind, f"alone {where}", t, None))
                grid.append((kind, f"soft KD a0.9 T4 {where}", t, kd))
        for temp in (1.0, 2.0):
            grid.append(("student4", f"soft KD a0.9 T{temp:g} lr 0.003 30 ep drop_last=True", {},
                         {"alpha": 0.9, "temperature": temp}))
        grid.append(("student4", "soft KD a0.5 T4 lr 0.003 30 ep drop_last=True", {}, {"alpha": 0.5, "temperature": 4.0}))
        grid.append(("student4", "soft KD a0.9 T4 without T^2 lr 0.003 30 ep drop_last=True", {},
                     {"losses": [{"name": "soft_kd", "weight": 0.9 / 16, "temperature": 4.0}, {"name": "ce", "weight": 0.1}]}))
        grid.append(("student4", "soft KD a0.9 T4 cache off lr 0.003 30 ep drop_last=True", {}, {**kd, "cache": "off"}))
        # which side does the 3-image last batch hurt? (student trained with it, teacher trained without)
        grid.append(("student", "soft KD a0.9 T4 lr 0.003 30 ep drop_last=False, teacher drop_last=True",
                     {"drop_last": False}, {**kd, "teacher": "drop_last=True"}))
        grid.append(("student", "alone lr 0.003 30 ep batch 43", {"drop_last": False, "batch_size": 43}, None))
        grid.append(("student", "soft KD a0.9 T4 lr 0.003 30 ep batch 43, teacher batch 43",
                     {"drop_last": False, "batch_size": 43}, {**kd, "teacher": "batch 43"}))
        for kind, what, t, cfg in grid:
            tcfg = TrainConfig(**{**base, **t})
            student = build(kind, seed)
            if cfg is None:
                res = train_model(student, train, tcfg, splits.val)
            else:
                cfg = dict(cfg)
                teacher = teachers[cfg.pop("teacher", f"drop_last={tcfg.drop_last}")]
                res = distill_fit(student, teacher, train, DistillConfig(**cfg, train=tcfg), splits.val)
            out["runs"].append({"seed": seed, "student": kind, "what": what, "test": acc(res.model, splits.test),
                                "val_first_epochs": [round(h["val_accuracy"], 3) for h in res.history[:6]]})
            print(f"seed {seed} {kind:8s} {what:55s} test={out['runs'][-1]['test']:.3f} "
                  f"val(ep1-6)={out['runs'][-1]['val_first_epochs']}", flush=True)
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    out["cpu_s"] = round(time.process_time() - cpu_start, 1)
    return out


def probe_markdown(result: dict[str, Any]) -> str:
    groups: dict[tuple[str, str], list[float]] = {}
    for r in result["runs"]:
        groups.setdefault((r.get("student", "teacher"), r["what"]), []).append(r["test"])
    lines = ["| student | run | test acc (mean over seeds) | seeds |", "|---|---|---|---|"]
    names = {"student4": "cnn width 4", "student": "cnn width 8", "teacher": "teacher cnn"}
    for (kind, what), v in groups.items():
        lines.append(f"| {names[kind]} | {what} | {100 * statistics.mean(v):.1f} | {len(v)} |")
    return "\n".join(lines)


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rows", default="", help="comma-separated subset of rows (default: all)")
    ap.add_argument("--cross-seeds", type=int, default=2, help="seeds for the (slow) mobilenetv2 row")
    ap.add_argument("--probe", action="store_true", help="run the soft-KD investigation instead of the table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.command = "python benchmarks/kd_digits.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(args.threads)
    run: Callable[[argparse.Namespace], dict[str, Any]] = run_probe if args.probe else run_table
    result = run(args)
    table = probe_markdown(result) if args.probe else markdown(result)
    result["markdown"] = table
    path = Path(args.json) if args.json else RESULTS / ("kd_digits_probe.json" if args.probe else "kd_digits.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(f"\nwall time {result['wall_s']} s (process CPU {result.get('cpu_s')} s); written to {path}")


if __name__ == "__main__":
    main()
