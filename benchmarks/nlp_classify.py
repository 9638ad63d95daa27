"""A labelled text task for accuracy numbers: which standard-library package does a docstring
paragraph come from? Teacher = all-MiniLM-L6-v2 with a classification head, fine-tuned. Students
have 3 of its 6 layers:

- `alone`: layers copied from the *pretrained* MiniLM, a fresh head, trained on the labels;
- `kd`: the same start, distilled from the fine-tuned teacher (Hinton et al. 2015 soft targets);
- `ft_alone`: layers, embeddings and head copied from the *fine-tuned teacher* (the DistilBERT /
  sentence-transformers initialisation, `build_model("hf:TEACHER", layers=3)`), trained on the
  labels alone (the control that separates the initialisation from the distillation loss);
- `ft_kd`: the same start, distilled (soft targets + labels + TinyBERT hidden-state MSE through
  the kept-layer map, Jiao et al. 2020).

Data: `stdlib-text` with `task: package`: the 8 largest top-level packages having >= 5 modules,
split BY MODULE (test modules never seen in training). Metrics on the test split: accuracy and
macro F1. Same epochs, batch, optimizer and learning rate for every student. `--teacher-dir`
keeps the fine-tuned teacher so later runs (other students, other seeds) reuse it.

    python benchmarks/nlp_classify.py [--epochs 3] [--seed 0] [--teacher-dir DIR] [--json ...]
    python benchmarks/nlp_classify.py --aggregate seed0.json seed1.json ... --json summary.json

`--aggregate` combines runs that differ only in `--seed` (one teacher, reused through
`--teacher-dir`) into mean and standard deviation per student.
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
from condense.core.cpu import cpu_record  # noqa: E402
from condense.core.io import atomic_write_json
from condense.models.hf import minilm_dir

VARIANTS = ("alone", "kd", "ft_alone", "ft_kd")


def aggregate(paths: list[str], out: str) -> None:
    """Mean / sd of accuracy and macro F1 per row over per-seed result files (one teacher)."""
    import json
    import statistics

    runs = [json.loads(Path(p).read_text()) for p in paths]
    keys = ("epochs", "lr", "alpha", "temperature", "hidden_weight", "max_length", "layers", "limit")
    if len({json.dumps({k: r["settings"].get(k) for k in keys}) for r in runs}) != 1:
        raise SystemExit("--aggregate: the runs differ in more than --seed")
    rows = {}
    for name in runs[0]["rows"]:
        acc = [r["rows"][name]["accuracy"] for r in runs]
        f1 = [r["rows"][name]["f1_macro"] for r in runs]
        rows[name] = {"accuracy_mean": statistics.mean(acc), "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                      "f1_macro_mean": statistics.mean(f1), "f1_macro_sd": statistics.stdev(f1) if len(f1) > 1 else 0.0,
                      "accuracy": acc, "f1_macro": f1, "params": runs[0]["rows"][name]["params"]}
    teacher = rows["teacher (6 layers)"]["accuracy_mean"]
    target = {v: {"gap_pt": round(100 * (teacher - rows[v]["accuracy_mean"]), 2),
                  "met": 100 * (teacher - rows[v]["accuracy_mean"]) <= 1.5} for v in ("kd", "ft_kd") if v in rows}
    atomic_write_json(out, {"rows": rows, "target": target, "seeds": [r["settings"]["seed"] for r in runs],
                            "runs": {p: {"times_s": r["times_s"], "wall_s": r["wall_s"], "machine": r["machine"]}
                                     for p, r in zip(paths, runs, strict=True)},
                            "settings": runs[0]["settings"], "data": runs[0]["data"], "classes": runs[0]["classes"]})
    for name, r in rows.items():
        print(f"{name:20s} acc {100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_sd']:.2f}  "
              f"F1 {100 * r['f1_macro_mean']:.2f} +- {100 * r['f1_macro_sd']:.2f}")
    print(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=None, help="default: --epochs")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the soft targets (the labels get 1 - alpha)")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--hidden-weight", type=float, default=1.0, help="TinyBERT hidden-state MSE weight in ft_kd")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="students' seed (head init, batch order)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--teacher-dir", default=None, help="save the fine-tuned teacher here; reuse it when present")
    ap.add_argument("--limit", type=int, default=None, help="a seeded sample of paragraphs (quick checks)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "nlp_classify.json"))
    ap.add_argument("--aggregate", nargs="+", default=None, metavar="RUN_JSON",
                    help="combine per-seed result files into --json (no training)")
    args = ap.parse_args()
    if args.aggregate:
        aggregate(args.aggregate, args.json)
        return
    variants = [v for v in args.variants.split(",") if v]
    if bad := [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variants {bad}; choose from {VARIANTS}")
    t_start = time.perf_counter()
    folder = minilm_dir()
    splits = condense.load_dataset("stdlib-text", task="package", max_length=args.max_length, tokenizer=str(folder),
                                   limit=args.limit)
    print(f"{splits.num_classes} classes {splits.class_names}; {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test)} test paragraphs (split by module)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="nlp_classify_"))

    def train_cfg(name: str, epochs: int, seed: int) -> condense.TrainConfig:
        return condense.TrainConfig(epochs=epochs, batch_size=32, lr=args.lr, warmup_steps=20, progress="off",
                                    seed=seed, checkpoint_dir=str(work / name))

    def build(source: Path, layers: int | None, fresh_head: bool) -> torch.nn.Module:
        torch.manual_seed(args.seed)
        kw = {"task": "sequence-classification", **({"num_labels": splits.num_classes} if fresh_head else {})}
        return condense.build_model(f"hf:{source}", **kw, **({} if layers is None else {"layers": layers}))

    times: dict[str, float] = {}
    teacher_dir = Path(args.teacher_dir) if args.teacher_dir else work / "teacher"
    if (teacher_dir / "condense.json").exists():
        teacher = condense.load(teacher_dir)
        print(f"teacher reused from {teacher_dir}", flush=True)
    else:
        t0 = time.perf_counter()
        epochs = args.teacher_epochs or args.epochs
        teacher = condense.train_model(build(folder, None, True), splits.train, train_cfg("teacher", epochs, 0),
                                       splits.val).model
        times["teacher_s"] = round(time.perf_counter() - t0, 1)
        condense.save(teacher, teacher_dir)
    teacher.eval()
    models: dict[str, torch.nn.Module] = {"teacher (6 layers)": teacher}
    kd_losses = [{"name": "soft_kd", "weight": args.alpha, "temperature": args.temperature},
                 {"name": "ce", "weight": 1 - args.alpha}]
    for v in variants:
        t0 = time.perf_counter()
        ft = v.startswith("ft_")
        student = build(teacher_dir if ft else folder, args.layers, not ft)
        cfg = train_cfg(v, args.epochs, args.seed)
        if v.endswith("alone"):
            student = condense.train_model(student, splits.train, cfg, splits.val).model
        else:
            losses = kd_losses + ([{"name": "hidden_state", "layer_map": "kept", "weight": args.hidden_weight}]
                                  if ft and args.hidden_weight > 0 else [])
            student = condense.distill(student, teacher, splits.train, condense.DistillConfig(losses=losses, train=cfg),
                                       splits.val)
        times[f"{v}_s"] = round(time.perf_counter() - t0, 1)
        models[v] = student
        print(f"{v}: {times[f'{v}_s']} s", flush=True)
    rows = {}
    for name, m in models.items():
        r = condense.evaluate(m, splits.test)
        rows[name] = {"accuracy": r["accuracy"], "f1_macro": r["f1_macro"],
                      "params": sum(p.numel() for p in m.parameters())}
        print(f"{name:20s} acc {100 * r['accuracy']:.2f}%  macro F1 {100 * r['f1_macro']:.2f}%", flush=True)
    t = rows["teacher (6 layers)"]["accuracy"]
    target = {"distilled_within_pt_of_teacher": 1.5}
    for v in ("kd", "ft_kd"):
        if v in rows:
            gap = round(100 * (t - rows[v]["accuracy"]), 2)
            target[v] = {"gap_pt": gap, "met": gap <= 1.5}
    result = {"rows": rows, "times_s": times, "settings": vars(args), "classes": splits.class_names,
              "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
              "target": target,
              "machine": {"cpu": cpu_record(), "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "loadavg_end": os.getloadavg()},
              "wall_s": round(time.perf_counter() - t_start, 1)}
    atomic_write_json(args.json, result)
    print(result["target"], times)


if __name__ == "__main__":
    main()
