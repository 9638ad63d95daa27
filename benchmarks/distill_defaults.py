"""Do distillation's defaults make a better student than training it alone? (issue 23)

Every row is a `condense` command with its defaults, run in-process through `condense.cli.main`
exactly as a user types it (the artifacts go to a temporary folder), on scikit-learn digits with
all labels and with 30 % of them (`--data-arg labelled_fraction=0.3`: the student sees only
the labelled images; `--transfer` stays at its default, the labelled train split). Per seed S
(0..N-1) the split is `--data-arg seed=S` and the training seed `--seed S`, the same for every
row, so the differences are paired. Rows:

- teacher:             condense train --model cnn
- alone (train):       condense train --model cnn --model-arg width=8
- alone, TrainConfig(): the Python API's `train_model(student, splits.train, TrainConfig())`
- distilled, old:      condense distill ... --config {train: {epochs: 10, lr: 0.001, warmup_steps: 0}}
                       (the defaults before issue 23: TrainConfig's, 10 epochs at lr 1e-3)
- distilled (defaults): condense distill --teacher <teacher> --student cnn --student-arg width=8
- alone, distill's schedule: condense train ... --lr 0.01 --set warmup_steps=20
                       (the control: the student alone with distillation's training settings,
                       so the gain from the teacher is told apart from the gain from the schedule)

    python benchmarks/distill_defaults.py      # -> benchmarks/results/distill_defaults.json

`--probe` runs the investigation behind the defaults through the Python API (seeds 0-2, both
label settings, teacher as `condense train`): soft KD at alpha 0.9 for 10 epochs over learning
rate x temperature, without the T^2 factor, with a warm-up, and with 20 epochs.

    python benchmarks/distill_defaults.py --probe   # -> benchmarks/results/distill_defaults_probe.json

`--small N` (issue 27) is the new user's run through the Python API on exactly N labelled digits:
`TrainConfig()` and `DistillConfig()` as they stand and as they were before issue 27 (10 / 20
epochs with drop_last, 50 / 100 optimizer steps on 377 images).

    python benchmarks/distill_defaults.py --small 377   # -> benchmarks/results/distill_defaults_377.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from condense.cli import build_parser, main
from condense.distill.config import DISTILL_TRAIN, DistillConfig

OUT = Path(__file__).parent / "results" / "distill_defaults.json"
PROBE_OUT = OUT.with_name("distill_defaults_probe.json")
SETTINGS = {"all labels": [], "30 % of labels": ["--data-arg", "labelled_fraction=0.3"]}
STUDENT = ["--model-arg", "width=8"]


def cpu_info() -> dict[str, Any]:
    """CPU model and the SIMD flags that matter for kernels (from /proc/cpuinfo on Linux)."""
    model, flags = "", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = sorted(f for f in value.split() if "vnni" in f or f.startswith("avx512") or f == "avx2")
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "simd_flags": flags,
            "logical_cpus": os.cpu_count()}


def cli(*argv: str) -> tuple[dict[str, Any], float]:
    """Run one `condense` command; return its --json summary and the CPU seconds it took."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--json"])
    cpu = time.process_time() - t0
    if code != 0:
        raise SystemExit(f"condense {' '.join(argv)} failed ({code}): {err.getvalue()[-2000:]}")
    return json.loads(out.getvalue()), cpu


def api_alone(seed: int, data_args: list[str]) -> float:
    """The student trained alone through the Python API with `TrainConfig()` defaults."""
    from condense.core.seed import seed_everything
    from condense.data import load_dataset
    from condense.evaluate import evaluate
    from condense.models import build_model
    from condense.train import TrainConfig, train_model

    fraction = 0.3 if data_args else None
    splits = load_dataset("digits", seed=seed, labelled_fraction=fraction)
    cfg = TrainConfig(seed=seed, progress="off")
    seed_everything(cfg.seed)
    student = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8)
    model = train_model(student, splits.train, cfg, splits.val).model
    return float(evaluate(model, splits.test)["accuracy"])


def run_seed(seed: int, data_args: list[str], work: Path) -> tuple[dict[str, float], dict[str, float]]:
    data = ["--data", "digits", "--data-arg", f"seed={seed}", *data_args]
    s = ["--seed", str(seed)]
    teacher = work / "teacher"
    acc, cpu = {}, {}
    r, cpu["teacher"] = cli("train", "--model", "cnn", *data, *s, "--out", str(teacher))
    acc["teacher"] = r["test_accuracy"]
    r, cpu["alone (condense train)"] = cli("train", "--model", "cnn", *STUDENT, *data, *s, "--out", str(work / "alone"))
    acc["alone (condense train)"] = r["test_accuracy"]
    t0 = time.process_time()
    acc["alone, API TrainConfig()"] = api_alone(seed, data_args)
    cpu["alone, API TrainConfig()"] = time.process_time() - t0
    old = work / "old.yaml"
    old.write_text("train: {epochs: 10, lr: 0.001, warmup_steps: 0}\n")
    distill = ["distill", "--teacher", str(teacher), "--student", "cnn", "--student-arg", "width=8", *s]
    r, cpu["distilled, old defaults"] = cli(*distill, "--config", str(old), "--out", str(work / "kd_old"))
    acc["distilled, old defaults"] = r["test_accuracy"]
    r, cpu["distilled (condense distill)"] = cli(*distill, "--out", str(work / "kd"))
    acc["distilled (condense distill)"] = r["test_accuracy"]
    ctrl = ["--lr", str(DISTILL_TRAIN["lr"]), "--set", f"warmup_steps={DISTILL_TRAIN['warmup_steps']}"]
    r, cpu["alone, distill's schedule"] = cli("train", "--model", "cnn", *STUDENT, *data, *s, *ctrl,
                                                  "--out", str(work / "alone_ctrl"))
    acc["alone, distill's schedule"] = r["test_accuracy"]
    return acc, cpu


def paired(vals: list[float], base: list[float]) -> dict[str, Any]:
    """Mean and std of the per-seed differences (points), and wins / ties / losses."""
    delta = [100 * (v - b) for v, b in zip(vals, base, strict=True)]
    return {"mean": statistics.mean(delta), "std": statistics.stdev(delta) if len(delta) > 1 else 0.0,
            "wins_ties_losses": [sum(d > 0 for d in delta), sum(d == 0 for d in delta), sum(d < 0 for d in delta)]}


def summarise(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    base = [r["alone (condense train)"] for r in per_seed]
    for name in per_seed[0]:
        vals = [r[name] for r in per_seed]
        rows[name] = {"accuracy": vals, "mean": 100 * statistics.mean(vals),
                      "std": 100 * statistics.stdev(vals) if len(vals) > 1 else 0.0,
                      "vs_alone": paired(vals, base)}
    kd = rows["distilled (condense distill)"]
    kd["vs_alone_same_schedule"] = paired(kd["accuracy"], rows["alone, distill's schedule"]["accuracy"])
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["| setting | row | test acc % (mean ± std) | Δ vs alone (condense train), paired | wins / ties / losses |",
             "|---|---|---|---|---|"]
    for setting, block in result["settings"].items():
        for name, r in block["rows"].items():
            d, w = "", ""
            if name not in ("teacher", "alone (condense train)"):
                d = f"{r['vs_alone']['mean']:+.2f} ± {r['vs_alone']['std']:.2f}"
                w = "{} / {} / {}".format(*r["vs_alone"]["wins_ties_losses"])
            lines.append(f"| {setting} | {name} | {r['mean']:.2f} ± {r['std']:.2f} | {d} | {w} |")
    lines.append("")
    for setting, block in result["settings"].items():
        r = block["rows"]["distilled (condense distill)"]["vs_alone_same_schedule"]
        lines.append(f"{setting}: distilled vs alone with distill's schedule, paired: {r['mean']:+.2f} ± {r['std']:.2f} "
                     "points, wins / ties / losses {} / {} / {}".format(*r["wins_ties_losses"]))
    return "\n".join(lines)


def _kd(temperature: float, t2: bool = True) -> dict[str, Any]:
    """alpha 0.9 soft KD at `temperature`; without T^2 the soft term's weight is divided by T^2."""
    if t2:
        return {"alpha": 0.9, "temperature": temperature}
    return {"losses": [{"name": "soft_kd", "temperature": temperature, "weight": 0.9 / temperature**2},
                       {"name": "ce", "weight": 0.1}]}


#: name -> (None for the student alone, or DistillConfig fields; TrainConfig fields over 10 epochs, lr 3e-3)
PROBE: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {
    "alone, lr 3e-3": (None, {}),
    "KD T=4, lr 1e-3 (old default)": (_kd(4), {"lr": 1e-3}),
    "KD T=1, lr 1e-3": (_kd(1), {"lr": 1e-3}),
    "KD T=4, lr 3e-3": (_kd(4), {}),
    "KD T=2, lr 3e-3": (_kd(2), {}),
    "KD T=1, lr 3e-3": (_kd(1), {}),
    "KD T=4 without T^2, lr 3e-3": (_kd(4, t2=False), {}),
    "KD T=4, lr 1e-2": (_kd(4), {"lr": 1e-2}),
    "KD T=4, lr 1e-2, warm-up 20": (_kd(4), {"lr": 1e-2, "warmup_steps": 20}),
    "alone, lr 1e-2, warm-up 20": (None, {"lr": 1e-2, "warmup_steps": 20}),
    "KD T=4, lr 1e-2, warm-up 20, 20 epochs (new default)": (_kd(4), {"lr": 1e-2, "warmup_steps": 20, "epochs": 20}),
    "alone, lr 1e-2, warm-up 20, 20 epochs": (None, {"lr": 1e-2, "warmup_steps": 20, "epochs": 20}),
}


def probe(seeds: int) -> dict[str, Any]:
    from condense.core.seed import seed_everything
    from condense.data import load_dataset
    from condense.distill import distill
    from condense.evaluate import evaluate
    from condense.models import build_model
    from condense.train import TrainConfig, train_model

    def cnn(seed: int, **kw: Any) -> torch.nn.Module:
        seed_everything(seed)
        return build_model("cnn", in_channels=1, image_size=8, num_classes=10, **kw)

    out: dict[str, Any] = {}
    for setting, data_args in SETTINGS.items():
        acc: dict[str, list[float]] = {name: [] for name in PROBE}
        for seed in range(seeds):
            splits = load_dataset("digits", seed=seed, labelled_fraction=0.3 if data_args else None)
            base = {"epochs": 10, "lr": 3e-3, "seed": seed, "progress": "off"}
            teacher = train_model(cnn(seed), splits.train, TrainConfig(**base), splits.val).model
            for name, (kd, train) in PROBE.items():
                cfg = TrainConfig(**{**base, **train})
                if kd is None:
                    model = train_model(cnn(seed, width=8), splits.train, cfg, splits.val).model
                else:
                    model = distill(cnn(seed, width=8), teacher, splits.train, DistillConfig(**kd, train=cfg), splits.val)
                acc[name].append(float(evaluate(model, splits.test)["accuracy"]))
            print(setting, seed, flush=True)
        out[setting] = {name: {"accuracy": v, "mean": 100 * statistics.mean(v),
                               "std": 100 * statistics.stdev(v) if len(v) > 1 else 0.0} for name, v in acc.items()}
    return out


#: name -> (True: distilled, False: alone; TrainConfig fields over the verb's defaults)
SMALL_ROWS: dict[str, tuple[bool, dict[str, Any]]] = {
    "alone, TrainConfig() before issue 27 (10 epochs, drop_last)": (False, {"epochs": 10, "drop_last": True}),
    "alone, TrainConfig()": (False, {}),
    "alone, condense train's lr 3e-3": (False, {"lr": 3e-3}),
    "distilled, DistillConfig() before issue 27 (20 epochs, drop_last)": (True, {"epochs": 20, "drop_last": True}),
    "distilled, DistillConfig()": (True, {}),
}


def small(seeds: int, n: int) -> dict[str, Any]:
    """Issue 27's new user: the Python API's defaults on exactly `n` labelled digits (the first `n`
    of the 30 % labelled train split), teacher as `condense train` trains it on the same images."""
    import warnings

    from condense.core.seed import seed_everything
    from condense.data import load_dataset
    from condense.distill import distill
    from condense.evaluate import evaluate
    from condense.models import build_model
    from condense.train import TrainConfig, train_model
    from condense.train.length import run_length

    def cnn(seed: int, **kw: Any) -> torch.nn.Module:
        seed_everything(seed)
        return build_model("cnn", in_channels=1, image_size=8, num_classes=10, **kw)

    acc: dict[str, list[float]] = {"teacher": [], **{name: [] for name in SMALL_ROWS}}
    steps: dict[str, int] = {}
    cpu = dict.fromkeys(acc, 0.0)
    for seed in range(seeds):
        splits = load_dataset("digits", seed=seed, labelled_fraction=0.3)
        train = splits.train.subset(torch.arange(n))
        q = {"seed": seed, "progress": "off"}
        t0 = time.process_time()
        teacher = train_model(cnn(seed), train, TrainConfig(epochs=10, lr=3e-3, **q), splits.val).model
        cpu["teacher"] += time.process_time() - t0
        acc["teacher"].append(float(evaluate(teacher, splits.test)["accuracy"]))
        for name, (kd, over) in SMALL_ROWS.items():
            t0 = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the old defaults' short runs warn (ShortRunWarning)
                if kd:
                    cfg = DistillConfig(train={**q, **over})
                    steps[name] = run_length(cfg.train, n).total_steps
                    model = distill(cnn(seed, width=8), teacher, train, cfg, splits.val)
                else:
                    tcfg = TrainConfig(**q, **over)
                    steps[name] = run_length(tcfg, n).total_steps
                    model = train_model(cnn(seed, width=8), train, tcfg, splits.val).model
            cpu[name] += time.process_time() - t0
            acc[name].append(float(evaluate(model, splits.test)["accuracy"]))
        print(n, seed, {k: round(100 * v[-1], 2) for k, v in acc.items()}, flush=True)
    base = acc["alone, TrainConfig()"]
    rows = {name: {"accuracy": v, "mean": 100 * statistics.mean(v),
                   "std": 100 * statistics.stdev(v) if len(v) > 1 else 0.0, "optimizer_steps": steps.get(name),
                   "cpu_s_per_run": cpu[name] / seeds, "vs_alone_TrainConfig": paired(v, base)}
            for name, v in acc.items()}
    lines = [f"| row ({n} labelled digits, seeds 0-{seeds - 1}) | optimizer steps | test acc % (mean ± std) "
             "| Δ vs alone, TrainConfig(), paired | wins / ties / losses |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        d = r["vs_alone_TrainConfig"]
        lines.append(f"| {name} | {r['optimizer_steps'] or ''} | {r['mean']:.2f} ± {r['std']:.2f} | "
                     f"{d['mean']:+.2f} ± {d['std']:.2f} | " + "{} / {} / {}".format(*d["wins_ties_losses"]) + " |")
    return {"samples": n, "rows": rows, "markdown": "\n".join(lines)}


def main_cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: timings comparable on shared cores)")
    ap.add_argument("--probe", action="store_true", help="the learning rate x temperature investigation instead")
    ap.add_argument("--json", type=Path, default=None, help=f"default {OUT} ({PROBE_OUT.name} with --probe)")
    ap.add_argument("--small", type=int, default=None, metavar="N",
                    help="quick: the Python API's defaults on exactly N labelled digits (issue 27: 377)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.small:
        t_cpu = time.process_time()
        res = {"cpu": cpu_info(), "torch": torch.__version__, "threads": args.threads,
               "seeds": list(range(args.seeds)), **small(args.seeds, args.small)}
        res["cpu_s_total"] = time.process_time() - t_cpu
        path = args.json or OUT.with_name(f"distill_defaults_{args.small}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(res["markdown"])
        print(f"CPU {res['cpu_s_total']:.0f} s on {res['cpu']['model']}; wrote {path}")
        return
    if args.probe:
        t_cpu = time.process_time()
        res = {"cpu": cpu_info(), "torch": torch.__version__, "threads": args.threads, "seeds": list(range(args.seeds)),
               "settings": probe(args.seeds)}
        res["cpu_s_total"] = time.process_time() - t_cpu
        lines = ["| run (alpha 0.9, 10 epochs unless stated) | " + " | ".join(res["settings"]) + " |",
                 "|---|" + "---|" * len(res["settings"])]
        for name in PROBE:
            cells = [f"{b[name]['mean']:.2f} ± {b[name]['std']:.2f}" for b in res["settings"].values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        res["markdown"] = "\n".join(lines)
        path = args.json or PROBE_OUT
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(res["markdown"])
        print(f"CPU {res['cpu_s_total']:.0f} s; wrote {path}")
        return
    train_defaults = build_parser().parse_args(["train", "--out", "x"])
    result: dict[str, Any] = {
        "cpu": cpu_info(), "torch": torch.__version__, "threads": args.threads, "seeds": list(range(args.seeds)),
        "student": "cnn width=8", "teacher": "cnn (width 32)",
        "condense_train_defaults": {"epochs": train_defaults.epochs, "lr": train_defaults.lr,
                                    "batch_size": train_defaults.batch_size, "optimizer": train_defaults.optimizer},
        "distill_defaults": {k: v for k, v in DistillConfig().to_dict().items() if k in ("alpha", "temperature")}
        | {k: DistillConfig().train.to_dict()[k] for k in ("epochs", "lr", "warmup_steps", "batch_size", "optimizer")},
        "settings": {},
    }
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    for setting, data_args in SETTINGS.items():
        per_seed, cpu = [], []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                acc, c = run_seed(seed, data_args, Path(tmp))
            per_seed.append(acc)
            cpu.append(c)
            print(setting, seed, {k: round(100 * v, 2) for k, v in acc.items()}, flush=True)
        rows = summarise(per_seed)
        for name in rows:
            rows[name]["cpu_s_per_run"] = statistics.mean(c[name] for c in cpu)
        result["settings"][setting] = {"rows": rows}
    result["cpu_s_total"] = time.process_time() - t_cpu
    result["wall_s_total"] = time.perf_counter() - t_wall
    result["markdown"] = markdown(result)
    path = args.json or OUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])
    print(f"CPU {result['cpu_s_total']:.0f} s, wall {result['wall_s_total']:.0f} s on {result['cpu']['model']}; "
          f"wrote {path}")


if __name__ == "__main__":
    main_cli()
