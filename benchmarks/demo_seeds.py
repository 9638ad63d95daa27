"""The demo over seeds: is the chain really better than the small model trained alone?

Part 1 (`chain`): the shipped demo recipe (`src/condense/recipes/demo.yaml`, 30 % of the labels)
run with `seed:` 0..N-1 (the seed redraws the split and which labels are kept; inside a seed every
row sees the same split). Reports teacher, student-alone (the final width-8 architecture trained
on the labels), student (width 16, distilled label-free) and deploy (pruned to width 8, int8).

Part 2 (`full_labels`): the setting the demo used before 2026-12-06 -- every training label kept,
teacher `cnn` (15 epochs), a student of width W trained alone vs distilled (alpha 0.9, T 4), 30
epochs each, same seed for both -- for W in --widths.

    python benchmarks/demo_seeds.py            # 2026-12-06 -> benchmarks/results/demo_seeds.json
    python benchmarks/demo_seeds.py --full-label-seeds 0   # part 1 only; part 2's recorded rows are kept

Each chain row records the CPU seconds (user + system) and wall seconds of its run; the JSON
records the CPU (`condense.core.cpu.cpu_record`: model, int8-relevant flags; float results
differ across CPUs).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

import condense
from condense.core.cpu import cpu_record
from condense.distill import DistillConfig, distill_fit
from condense.models.registry import build_model
from condense.recipes import run_recipe
from condense.train import TrainConfig, train_model

RECIPE = Path(condense.__file__).parent / "recipes" / "demo.yaml"


def chain(seeds: int, work: Path) -> list[dict[str, float]]:
    rows = []
    for seed in range(seeds):
        data = yaml.safe_load(RECIPE.read_text())
        data["seed"] = seed
        recipe = work / f"demo_{seed}.yaml"
        recipe.write_text(yaml.safe_dump(data, sort_keys=False))
        cpu0, wall0 = _cpu_s(), time.perf_counter()
        report = run_recipe(recipe, work / f"run_{seed}", quiet=True)
        acc = {r["stage"]: 100 * r["accuracy"] for r in report["stages"]}
        row = {"seed": seed, **{k: acc[k] for k in ("teacher", "student-alone", "student", "deploy")}}
        row["deploy_minus_alone"] = row["deploy"] - row["student-alone"]
        row["cpu_s"], row["wall_s"] = round(_cpu_s() - cpu0, 1), round(time.perf_counter() - wall0, 1)
        print(row, flush=True)
        rows.append(row)
    return rows


def full_labels(seeds: int, widths: list[int]) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {str(w): [] for w in widths}
    for seed in range(seeds):
        splits = condense.load_dataset("digits", seed=seed)
        torch.manual_seed(seed)
        teacher = build_model("cnn", in_channels=1, image_size=8, num_classes=10)
        tc = TrainConfig(epochs=15, lr=0.003, warmup_steps=20, seed=seed, progress="off")
        teacher = train_model(teacher, splits.train, tc, splits.val).model
        t_acc = 100 * condense.evaluate(teacher, splits.test)["accuracy"]
        for w in widths:
            accs = {}
            for kind in ("alone", "distilled"):
                torch.manual_seed(seed + 1)  # both students start from the same weights
                student = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=w)
                sc = TrainConfig(epochs=30, lr=0.003, warmup_steps=20, seed=seed, progress="off")
                if kind == "alone":
                    model = train_model(student, splits.train, sc, splits.val).model
                else:
                    model = distill_fit(student, teacher, splits.train, DistillConfig(alpha=0.9, temperature=4.0, train=sc),
                                        splits.val).model
                accs[kind] = 100 * condense.evaluate(model, splits.test)["accuracy"]
            row = {"seed": seed, "teacher": t_acc, **accs, "distilled_minus_alone": accs["distilled"] - accs["alone"]}
            print(f"width {w}", row, flush=True)
            out[str(w)].append(row)
    return out


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def summary(rows: list[dict[str, float]], key: str) -> dict[str, float]:
    vals = [r[key] for r in rows]
    return {"mean": statistics.mean(vals), "std": statistics.pstdev(vals), "wins": sum(v > 0 for v in vals), "n": len(vals)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--full-label-seeds", type=int, default=6)
    ap.add_argument("--widths", type=int, nargs="*", default=[16, 8, 4])
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "demo_seeds.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="condense-demo-seeds-"))
    result: dict = {"chain": chain(args.seeds, work)}
    result["chain_summary"] = {k: statistics.mean(r[k] for r in result["chain"])
                               for k in ("teacher", "student-alone", "student", "deploy")}
    result["chain_summary"]["deploy_minus_alone"] = summary(result["chain"], "deploy_minus_alone")
    result["chain_summary"]["cpu_s_per_run"] = statistics.mean(r["cpu_s"] for r in result["chain"])
    result["chain_summary"]["wall_s_per_run"] = statistics.mean(r["wall_s"] for r in result["chain"])
    if args.widths and args.full_label_seeds > 0:
        fl = full_labels(args.full_label_seeds, args.widths)
        result["full_labels"] = fl
        result["full_labels_summary"] = {w: summary(rows, "distilled_minus_alone") for w, rows in fl.items()}
    elif Path(args.json).is_file():  # part 2 not rerun: keep the rows recorded earlier
        old = json.loads(Path(args.json).read_text())
        for key in ("full_labels", "full_labels_summary", "full_labels_machine"):
            if key in old:
                result[key] = old[key]
        result.setdefault("full_labels_machine", old.get("machine"))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg(), "torch": torch.__version__,
                         "cpu": cpu_record()}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result.get(k) for k in ("chain_summary", "full_labels_summary", "wall_s", "machine")}, indent=1))


if __name__ == "__main__":
    main()
