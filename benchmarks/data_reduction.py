"""Data-reduction benchmarks: coreset transfer sets, coreset PTQ calibration, PCA-reduced tabular students.

Parts (all on data bundled with scikit-learn; nothing downloaded):

* coreset  — digits. Teacher: zoo `cnn` default (~288K params) trained on the training labels.
  Student: `cnn` width=8 (~18K). Label-free distillation (alpha=1, T=4) on the full transfer set
  (all training images) vs on a 25 % coreset (k-center greedy / k-means on the teacher's
  "flatten" embeddings, optionally stratified by the teacher's predicted class; k-center on the raw
  inputs; a seeded random 25 %), all with the SAME number of optimizer steps (630, last weights).
  Baselines: the student trained alone on all training labels, and on 10 % of them.
  Gain retention = (coreset - alone) / (full - alone).
* ptq      — digits. Static PTQ (int8 weights + activations, simulated) of the teacher and of the
  distilled student, calibrated on 512 random training samples vs 64 samples chosen by k-center /
  k-means on the model's own embeddings vs 64 random ones. Test accuracy of the simulated int8
  model and its top-1 agreement with the fp32 model. Repeated at 4-bit activations, where the
  calibration set matters more.
* tabular  — breast_cancer. MLP teacher (256-128) -> tiny MLP student (hidden 4) on PCA-reduced
  (whitened) inputs, fitted on the training split only; the PCA projection is a frozen module in
  front of the student, so the deployed student still takes the 30 raw features.

    python benchmarks/data_reduction.py --parts coreset --seeds 0 1 2 3
    python benchmarks/data_reduction.py --parts ptq --seeds 0 1 2
    python benchmarks/data_reduction.py --parts tabular --seeds 0 1 2 3 4

Writes benchmarks/results/data_reduction_<part>.json. Keep `--threads 1` on shared machines.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.cpu import cpu_record  # noqa: E402
from condense.data import load_dataset
from condense.data.base import ArrayDataset
from condense.distill import DistillConfig, distill
from condense.evaluate import count_parameters, evaluate
from condense.models import build_model
from condense.reduce import CoresetConfig, PCAConfig, SelectConfig, reduce_data, select_coreset
from condense.train import TrainConfig, train_model

RESULTS = Path(__file__).parent / "results"
CORESETS: dict[str, dict[str, Any]] = {
    "k-center, teacher embeddings": {"strategy": "k_center"},
    "k-means, teacher embeddings": {"strategy": "kmeans"},
    "k-center, teacher embeddings, stratified by teacher prediction": {"strategy": "k_center", "stratify": "predicted"},
    "k-center, raw inputs": {"strategy": "k_center", "on": "inputs"},
    "random": {"strategy": "random"},
}
STEPS = 630  # = 30 epochs of the full digits training split at batch 64 (21 steps / epoch)


def mean_std(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def tcfg(seed: int, steps: int | None = None, epochs: int = 30, lr: float = 3e-3, **kw: Any) -> TrainConfig:
    return TrainConfig(epochs=max(epochs, 1), max_steps=steps, lr=lr, seed=seed, progress="off",
                       select_best="last", **kw)


def digits_models(seed: int) -> tuple[Any, nn.Module]:
    splits = load_dataset("digits", seed=seed)
    torch.manual_seed(seed)
    teacher = build_model("cnn", in_channels=1, image_size=8, num_classes=10)
    teacher = train_model(teacher, splits.train, tcfg(seed, epochs=15), splits.val).model.eval()
    return splits, teacher


def student(seed: int) -> nn.Module:
    torch.manual_seed(1000 + seed)
    return build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8)


def kd(seed: int, teacher: nn.Module, data: ArrayDataset) -> nn.Module:
    cfg = DistillConfig(alpha=1.0, temperature=4.0, train=tcfg(seed, STEPS))
    return distill(student(seed), teacher, data.without_labels(), cfg)


def acc(model: nn.Module, data: ArrayDataset) -> float:
    return float(evaluate(model, data, topk=(1,))["accuracy"])


# -- part 1: coreset transfer sets --------------------------------------------------------------------
def part_coreset(seeds: list[int], fraction: float, cache: dict[int, Any]) -> dict[str, Any]:
    rows: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        splits, teacher = cache[seed][:2] if seed in cache else digits_models(seed)
        test = splits.test
        r = {"teacher": acc(teacher, test)}
        sup = train_model(student(seed), splits.train, tcfg(seed, STEPS)).model
        r["student alone (all labels)"] = acc(sup, test)
        few = reduce_data(splits.train, CoresetConfig(fraction=0.10, strategy="random", seed=seed)).data
        r["student alone (10 % labels)"] = acc(train_model(student(seed), few, tcfg(seed, STEPS)).model, test)
        full_kd = kd(seed, teacher, splits.train)
        r["distill, full transfer set"] = acc(full_kd, test)
        cache[seed] = (splits, teacher, full_kd)
        for label, kw in CORESETS.items():
            sel = select_coreset(splits.train, CoresetConfig(fraction=fraction, seed=seed, **kw), teacher)
            name = f"distill, {int(fraction * 100)} % coreset: {label}"
            sizes[name] = len(sel.data)
            r[name] = acc(kd(seed, teacher, sel.data), test)
            r[f"{name} [fewest images of one class]"] = int(torch.bincount(sel.data.targets, minlength=10).min())
        for k, v in r.items():
            rows.setdefault(k, []).append(v)
        print(f"seed {seed} ({time.perf_counter() - t0:.0f}s): " + ", ".join(f"{k}={v:.4f}" for k, v in r.items()), flush=True)
    summary = {k: mean_std(v) for k, v in rows.items()}
    retention: dict[str, Any] = {}
    full = summary["distill, full transfer set"]["mean"]
    for base in ("student alone (all labels)", "student alone (10 % labels)"):
        alone = summary[base]["mean"]
        retention[base] = {
            "full_gain_points": 100 * (full - alone),
            **{k: {"gain_points": 100 * (summary[k]["mean"] - alone),
                   "retention": (summary[k]["mean"] - alone) / (full - alone) if abs(full - alone) > 1e-12 else None}
               for k in summary if "coreset" in k and "[" not in k},
        }
    return {"per_seed": rows, "summary": summary, "retention_of_gain": retention, "coreset_sizes": sizes,
            "transfer_set_size": len(cache[seeds[0]][0].train), "steps": STEPS}


# -- part 2: PTQ calibration ---------------------------------------------------------------------------
def part_ptq(seeds: list[int], cache: dict[int, Any]) -> dict[str, Any]:
    from condense.quantize import QuantizeConfig, quantize_static

    rows: dict[str, list[float]] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        got = cache.get(seed)
        if got is None or len(got) < 3:
            splits, teacher = digits_models(seed) if got is None else got[:2]
            got = (splits, teacher, kd(seed, teacher, splits.train))
            cache[seed] = got
        splits, teacher, stud = got
        test = splits.test
        r: dict[str, float] = {}
        for mname, model in (("teacher", teacher), ("student", stud)):
            model.eval()
            with torch.no_grad():
                ref = model(test.inputs).argmax(1)
            r[f"{mname} fp32"] = acc(model, test)
            calib = {
                "512 random": select_coreset(splits.train, CoresetConfig(size=512, strategy="random", seed=seed,
                                                                         cover_classes=False)).data,
                "64 random": select_coreset(splits.train, CoresetConfig(size=64, strategy="random", seed=seed,
                                                                        cover_classes=False)).data,
                "64 k_center": select_coreset(splits.train, CoresetConfig(size=64, strategy="k_center", seed=seed), model).data,
                "64 kmeans": select_coreset(splits.train, CoresetConfig(size=64, strategy="kmeans", seed=seed), model).data,
            }
            for abits in (8, 4):
                for cname, cdata in calib.items():
                    cfg = QuantizeConfig(activation_bits=abits, calibration_samples=len(cdata))
                    q = quantize_static(model, cfg, calibration=cdata.without_labels())
                    key = f"{mname} w8a{abits}, calib {cname}"
                    r[key] = acc(q, test)
                    with torch.no_grad():
                        r[key + " [agreement with fp32]"] = float((q(test.inputs).argmax(1) == ref).float().mean())
        for k, v in r.items():
            rows.setdefault(k, []).append(v)
        print(f"seed {seed} ({time.perf_counter() - t0:.0f}s): " + ", ".join(f"{k}={v:.4f}" for k, v in r.items()
                                                                             if "agreement" not in k), flush=True)
    return {"per_seed": rows, "summary": {k: mean_std(v) for k, v in rows.items()},
            "note": "calibration on training samples; accuracy on the test split; 64-sample coresets "
                    "use the quantized model's own 'flatten' embeddings; cover_classes on for coresets"}


# -- part 3: tabular PCA student -----------------------------------------------------------------------
def part_tabular(seeds: list[int], components: int, hidden: int) -> dict[str, Any]:
    rows: dict[str, list[float]] = {}
    params: dict[str, int] = {}
    for seed in seeds:
        splits = load_dataset("breast_cancer", seed=seed)
        d = splits.input_shape[0]
        test = splits.test
        torch.manual_seed(seed)
        teacher = build_model("mlp", in_features=d, num_classes=2, hidden=[256, 128])
        teacher = train_model(teacher, splits.train, tcfg(seed, epochs=60, weight_decay=1e-3), splits.val).model.eval()
        r = {"teacher mlp 256-128 (30 features)": acc(teacher, test)}
        params["teacher mlp 256-128 (30 features)"] = count_parameters(teacher)["params"]

        def tiny(inp: int, seed: int = seed) -> nn.Module:
            torch.manual_seed(1000 + seed)
            return build_model("mlp", in_features=inp, num_classes=2, hidden=[hidden])

        cfg = DistillConfig(alpha=1.0, temperature=4.0, train=tcfg(seed, epochs=150, lr=1e-2, weight_decay=1e-4))
        name = f"tiny mlp {hidden} (30 features), distilled"
        m = distill(tiny(d), teacher, splits.train.without_labels(), cfg)
        r[name], params[name] = acc(m, test), count_parameters(m)["params"]
        name = f"tiny mlp {hidden} (30 features), labels only"
        m = train_model(tiny(d), splits.train, tcfg(seed, epochs=150, lr=1e-2, weight_decay=1e-4)).model
        r[name], params[name] = acc(m, test), count_parameters(m)["params"]
        for whiten in (True, False):
            red = reduce_data(splits, PCAConfig(n_components=components, whiten=whiten))
            proj = red.transform.as_module()
            tag = f"PCA-{components}{' whitened' if whiten else ''}"
            # distill through a frozen projection so teacher and student read the same raw batch
            name = f"tiny mlp {hidden} on {tag}, distilled"
            m = distill(nn.Sequential(proj, tiny(components)), teacher, splits.train.without_labels(), cfg)
            r[name] = acc(m, test)
            params[name] = count_parameters(m[1])["params"]
            name = f"tiny mlp {hidden} on {tag}, labels only"
            m = train_model(tiny(components), red.data.train, tcfg(seed, epochs=150, lr=1e-2, weight_decay=1e-4)).model
            r[name] = acc(m, red.data.test)
            params[name] = count_parameters(m)["params"]
            r[f"{tag} explained variance (train)"] = red.info["explained_variance_ratio"]
        sel = reduce_data(splits, SelectConfig(k=components, score="mutual_info", seed=seed))
        name = f"tiny mlp {hidden} on {components} selected features (mutual info), distilled"
        m = distill(nn.Sequential(sel.transform.as_module(), tiny(components)), teacher, splits.train.without_labels(), cfg)
        r[name], params[name] = acc(m, test), count_parameters(m[1])["params"]
        for k, v in r.items():
            rows.setdefault(k, []).append(v)
        print(f"seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items()), flush=True)
    return {"per_seed": rows, "summary": {k: mean_std(v) for k, v in rows.items()}, "params": params,
            "projection_constants": {"pca_floats": 30 + components * 31, "selection_ints": components,
                                     "note": "PCA: mean (30) + components (k x 30) + scale (k); buffers, not trained"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["coreset", "ptq", "tabular"], choices=["coreset", "ptq", "tabular"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--components", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache: dict[int, Any] = {}
    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
           "machine": platform.machine(), "cpu": cpu_record(), "seeds": args.seeds}
    for part in args.parts:
        t0 = time.perf_counter()
        if part == "coreset":
            res = part_coreset(args.seeds, args.fraction, cache)
        elif part == "ptq":
            res = part_ptq(args.seeds, cache)
        else:
            res = part_tabular(args.seeds, args.components, args.hidden)
        res["wall_s"] = time.perf_counter() - t0
        res["env"] = env
        out = Path(args.out) / f"data_reduction_{part}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"{part}: {res['wall_s']:.0f}s -> {out}", flush=True)
        for k, v in res["summary"].items():
            print(f"  {k:60s} {v['mean']:.4f} ± {v['std']:.4f}")


if __name__ == "__main__":
    main()
