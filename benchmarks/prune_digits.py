"""Issue 4's pruning benchmark: what pruning + recovery buys on digits, measured honestly.

For the teacher CNN (`cnn`, zoo defaults) and the CIFAR-style ResNet-20 (`resnet`, zoo
defaults), both on sklearn's 8x8 digits (split fixed: `load_dataset("digits", seed=0)`; only the
training seed varies, 0..N-1):

* dense: trained once per seed and model (`--dense-epochs`, AdamW, cosine, best-on-validation);
* structured channel pruning (L1, layer scope, `round_to` 8) removing >= 50 % and >= 75 % of the
  MACs (`target_macs` 0.5 / 0.25 picks the channel ratio), BatchNorm statistics re-estimated on
  8 batches, then recovered by fine-tuning or by distillation from the unpruned model
  (alpha 0.9, T 4; `--recover-epochs`, last epoch kept);
* control: the 75 % pruned architecture (edit log replayed on a fresh model, re-initialised with
  the zoo's init) trained from scratch for dense + recovery epochs (`--scratch-all`: 50 % too),
  and the same architecture distilled from scratch from the dense model for as many epochs
  (`ch75-scratch-kd`: does inheriting the pruned weights add anything beyond distillation?);
* unstructured magnitude masks (layer scope; the first conv, 9 weights per filter, left dense),
  one iterative chain 50 % -> 80 % -> 90 %, fine-tuned `--unstructured-epochs` after each step.

Accuracy is on the held-out test split (mean +- std over seeds; "delta" is paired per seed).
Params, MACs and bytes on disk (safetensors written by `condense.save`) come from seed 0 (every
seed gets the same widths). Latency: `condense.evaluate.profile` (torch eager and onnxruntime,
batch 1 and 256, median after warm-up) with ONE intra-op thread for stability, on seed 0's
models loaded back with `condense.load`; one model per set of layer shapes (dense, ch50, ch75,
mag90), `--latency-rounds` rounds interleaved; a model's latency is the median of its per-round
medians and its ratio the median over rounds of (its median / the dense median of that round).

    python benchmarks/prune_digits.py                      # full run (5 seeds, both models, 2 worker processes)
    python benchmarks/prune_digits.py --quick              # smoke run (1 seed, 1 epoch, cnn)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "prune_digits.json"
STRUCTURED = {"ch50": 0.5, "ch75": 0.25}  # row prefix -> fraction of the MACs kept
UNSTRUCTURED = (0.5, 0.8, 0.9)
FIRST_CONV = {"cnn": "features.0.0.conv", "resnet": "stem.conv"}


def _model_kwargs() -> dict[str, Any]:
    return {"in_channels": 1, "image_size": 8, "num_classes": 10}


def run_unit(model_name: str, seed: int, args: dict[str, Any], save_dir: str | None) -> dict[str, Any]:
    """Train the dense model for one (model, seed) and every pruned / control row derived from it."""
    torch.set_num_threads(args["threads"])
    from condense.artifacts import save
    from condense.data import load_dataset
    from condense.evaluate import evaluate
    from condense.models import build_model, replay_edits
    from condense.models.cnn import init_weights
    from condense.prune import ChannelConfig, MagnitudeConfig, count_macs
    from condense.prune.recover import RecoverConfig, prune_and_recover
    from condense.prune.report import count_params, pruning_report
    from condense.train import TrainConfig, train_model

    t_unit = time.perf_counter()
    splits = load_dataset("digits", seed=0)  # fixed split; the seed below is the training seed
    x1 = splits.test.inputs[:1]
    dense_cfg = TrainConfig(epochs=args["dense_epochs"], batch_size=args["batch_size"], lr=args["lr"], warmup_steps=20,
                            seed=seed, progress="off")
    rec_train = TrainConfig(epochs=args["recover_epochs"], batch_size=args["batch_size"], lr=args["recover_lr"],
                            warmup_steps=10, seed=seed, progress="off", select_best="last")
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, torch.nn.Module] = {}

    def record(name: str, model: torch.nn.Module, t0: float, **extra: Any) -> None:
        rows[name] = {"test_accuracy": float(evaluate(model, splits.test)["accuracy"]), "params": count_params(model),
                      "macs": count_macs(model, x1), "train_s": round(time.perf_counter() - t0, 2), **extra}
        models[name] = model

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    dense = train_model(build_model(model_name, **_model_kwargs()), splits.train, dense_cfg, splits.val).model
    record("dense", dense, t0)

    for prefix, keep in STRUCTURED.items():
        for method in ("finetune", "distill"):
            t0 = time.perf_counter()
            rcfg = RecoverConfig(method=method, alpha=args["alpha"], temperature=args["temperature"], train=rec_train,
                                 bn_batches=args["bn_batches"])
            pruned, info = prune_and_recover(copy.deepcopy(dense), ChannelConfig(importance="l1", round_to=args["round_to"]),
                                             rcfg, splits.train, splits.val, x1, target_macs=keep)
            va = info["val"]
            record(f"{prefix}-{'ft' if method == 'finetune' else 'kd'}", pruned, t0, channel_ratio=info["channel_ratio"],
                   val_accuracy_pruned=va["edited"], val_accuracy_bn_recalibrated=va.get("edited_bn_recalibrated"))
        if prefix != "ch75" and not args["scratch_all"]:
            continue
        # control: the pruned architecture, re-initialised, trained from scratch for dense + recovery epochs
        t0 = time.perf_counter()
        torch.manual_seed(10_000 + seed)
        fresh = build_model(model_name, **_model_kwargs())
        replay_edits(fresh, models[f"{prefix}-kd"].condense_edits)
        init_weights(fresh)
        scratch_cfg = dense_cfg.replace(epochs=args["dense_epochs"] + args["recover_epochs"])
        scratch = train_model(fresh, splits.train, scratch_cfg, splits.val).model
        record(f"{prefix}-scratch", scratch, t0)
        if args["scratch_kd"]:
            from condense.distill import DistillConfig, distill_fit

            t0 = time.perf_counter()
            torch.manual_seed(10_000 + seed)
            fresh = build_model(model_name, **_model_kwargs())
            replay_edits(fresh, models[f"{prefix}-kd"].condense_edits)
            init_weights(fresh)
            kd = distill_fit(fresh, dense, splits.train, DistillConfig(alpha=args["alpha"], temperature=args["temperature"],
                                                                        train=scratch_cfg), splits.val).model
            record(f"{prefix}-scratch-kd", kd, t0)

    # unstructured: one iterative chain 50 -> 80 -> 90 %, masks held, made permanent after each row
    current = copy.deepcopy(dense)
    u_train = rec_train.replace(epochs=args["unstructured_epochs"])
    for ratio in UNSTRUCTURED:
        t0 = time.perf_counter()
        current, info = prune_and_recover(
            current, MagnitudeConfig(ratio=ratio, scope="layer"), RecoverConfig(method="finetune", train=u_train, keep_masks=True,
                                                                                  bn_batches=args["bn_batches"]),
            splits.train, splits.val, x1, ignore=[FIRST_CONV[model_name]],
        )
        snapshot = copy.deepcopy(current)
        from condense.prune import make_permanent

        make_permanent(snapshot)
        rep = pruning_report(snapshot, x1)
        record(f"mag{int(ratio * 100)}-ft", snapshot, t0, sparsity=rep["sparsity"],
               nonzero_params=int(sum(int((p != 0).sum()) for p in snapshot.parameters())),
               compressed_size_estimate=rep.get("compressed_size_estimate"), notes=rep["notes"])

    if save_dir is not None:  # seed 0's models, for bytes on disk and latency
        for name in PROFILED:
            model = models[name]
            save(model, Path(save_dir) / model_name / name, metrics={"test_accuracy": rows[name]["test_accuracy"]})
    return {"model": model_name, "seed": seed, "rows": rows, "wall_s": round(time.perf_counter() - t_unit, 1)}


def profile_models(folder: Path, names: list[str], rounds: int, repeats: int, threads: int) -> dict[str, Any]:
    """Bytes on disk and latency of the saved models (`names[0]` is the dense reference).

    Each model is loaded back with `condense.load` (edit log replayed) and exported to ONNX once
    (parity-checked); then `rounds` rounds profile every model in turn. A model's latency is the
    median of its per-round medians; its ratio is the median over rounds of (its median / the
    dense model's median in the same round), so slow spells on the shared machine hit both.
    """
    from condense.artifacts import load
    from condense.data import load_dataset
    from condense.evaluate import profile
    from condense.export import export_onnx

    x1 = load_dataset("digits", seed=0).test.inputs[:1]
    loaded = {n: load(folder / n) for n in names}
    onnx = {n: export_onnx(loaded[n], x1, folder / n / "model.onnx") for n in names}
    per: dict[str, dict[str, dict[str, list[float]]]] = {n: {} for n in names}
    for _ in range(rounds):
        for n in names:
            p = profile(loaded[n], x1, runtimes=("torch", "onnxruntime"), batch_sizes=(1, 256), threads=threads,
                        onnx_path=onnx[n].path, warmup=5, repeats=repeats)
            for rt, by in p["latency"].items():
                for bs, lat in by.items():
                    per[n].setdefault(rt, {}).setdefault(bs, []).append(lat["p50_ms"])
    base = per[names[0]]
    out = {}
    for n in names:
        out[n] = {
            "bytes_safetensors": (folder / n / "model.safetensors").stat().st_size,
            "bytes_onnx": onnx[n].bytes,
            "latency_ms": {rt: {bs: statistics.median(v) for bs, v in by.items()} for rt, by in per[n].items()},
            "latency_ratio": {rt: {bs: statistics.median(a / b for a, b in zip(v, base[rt][bs], strict=True)) for bs, v in by.items()}
                              for rt, by in per[n].items()},
            "latency_rounds_ms": per[n],
        }
    return out


#: rows whose layer shapes equal a profiled row's: latency is measured once per shape set.
PROFILED = ("dense", "ch50-kd", "ch75-kd", "mag90-ft")


def _twin(row: str) -> str:
    """The profiled row with the same layer shapes (masked rows are dense-shaped, like mag90-ft)."""
    if row.startswith("mag"):
        return "mag90-ft"
    return row.split("-")[0] + "-kd" if row.startswith("ch") else "dense"


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def aggregate(units: list[dict[str, Any]], prof: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model_name in sorted({u["model"] for u in units}):
        mine = sorted((u for u in units if u["model"] == model_name), key=lambda u: u["seed"])
        names = list(mine[0]["rows"])
        dense_acc = [u["rows"]["dense"]["test_accuracy"] for u in mine]
        seed0 = mine[0]["rows"]
        rows = {}
        for n in names:
            acc = [u["rows"][n]["test_accuracy"] for u in mine]
            r: dict[str, Any] = {
                "test_accuracy": {**_mean_std(acc), "per_seed": acc},
                "delta_vs_dense_pt": _mean_std([100 * (a - d) for a, d in zip(acc, dense_acc, strict=True)]),
                "params": seed0[n]["params"], "macs": seed0[n]["macs"],
                "macs_fraction": seed0[n]["macs"] / seed0["dense"]["macs"],
                "params_fraction": seed0[n]["params"] / seed0["dense"]["params"],
                "train_s": _mean_std([u["rows"][n]["train_s"] for u in mine]),
            }
            for key in ("channel_ratio", "sparsity", "nonzero_params", "compressed_size_estimate", "notes"):
                if key in seed0[n]:
                    r[key] = seed0[n][key]
            for key in ("val_accuracy_pruned", "val_accuracy_bn_recalibrated"):
                if seed0[n].get(key) is not None:
                    r[key] = _mean_std([u["rows"][n][key] for u in mine])
            twin = n if n in prof.get(model_name, {}) else _twin(n)
            p = prof.get(model_name, {}).get(twin)
            if p:
                r.update(p)
                r["latency_measured_on"] = twin
            rows[n] = r
        out[model_name] = {"seeds": [u["seed"] for u in mine], "rows": rows}
    return out


def check_targets(models: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for m, res in models.items():
        rows = res["rows"]

        def add(what: str, value: float, threshold: float, ok: bool, m: str = m) -> None:
            checks.append({"model": m, "check": what, "value": value, "threshold": threshold, "pass": bool(ok)})

        d = rows["ch75-kd"]["delta_vs_dense_pt"]["mean"]
        add("ch75-kd accuracy delta vs dense (pt) >= -0.2", d, -0.2, d >= -0.2)
        for rt in ("torch", "onnxruntime"):
            lr = rows["ch75-kd"].get("latency_ratio", {}).get(rt, {}).get("256")
            if lr is not None:
                add(f"ch75-kd latency ratio {rt} batch 256 <= 0.40", lr, 0.40, lr <= 0.40)
        kd, sc = rows["ch75-kd"]["test_accuracy"]["mean"], rows["ch75-scratch"]["test_accuracy"]["mean"]
        add("ch75-kd accuracy - ch75-scratch accuracy (pt) > 0", 100 * (kd - sc), 0.0, kd > sc)
        d = rows["mag90-ft"]["delta_vs_dense_pt"]["mean"]
        add("mag90-ft accuracy delta vs dense (pt) >= -0.5", d, -0.5, d >= -0.5)
        for prefix in STRUCTURED:
            kd, ft = rows[f"{prefix}-kd"]["test_accuracy"]["mean"], rows[f"{prefix}-ft"]["test_accuracy"]["mean"]
            add(f"{prefix}: distill - finetune accuracy (pt) >= 0", 100 * (kd - ft), 0.0, kd >= ft)
    return checks


def markdown(models: dict[str, Any]) -> str:
    head = ("| model | row | test acc % (mean ± std) | Δ vs dense (pt) | params | MACs (% dense) | bytes (safetensors) "
            "| torch b1 | torch b256 | ort b1 | ort b256 |")
    lines = [head, "|" + "---|" * 11]
    for m, res in models.items():
        for n, r in res["rows"].items():
            acc, d = r["test_accuracy"], r["delta_vs_dense_pt"]
            lat = r.get("latency_ratio", {})
            mark = "" if r.get("latency_measured_on") == n else "†"
            cells = [f"{lat[rt][bs]:.2f}{mark}" if rt in lat else "–" for rt in ("torch", "onnxruntime") for bs in ("1", "256")]
            params = f"{r['params']:,}" + (f" ({r['nonzero_params']:,} ≠0)" if "nonzero_params" in r else "")
            bytes_ = f"{r['bytes_safetensors']:,}" if "bytes_safetensors" in r else "–"
            est = r.get("compressed_size_estimate")
            if est:
                bytes_ += f" (est. compressed: bitmask {est['bitmask_estimate']:,} / CSR {est['csr_estimate']:,})"
            lines.append(f"| {m} | {n} | {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} | "
                         f"{d['mean']:+.2f} ± {d['std']:.2f} | {params} | {r['macs']:,} ({100 * r['macs_fraction']:.1f} %) | "
                         f"{bytes_} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Latency columns: pruned / unpruned median latency (same model family, same round). "
                 "† = same layer shapes as the measured row of its group (ch50-kd, ch75-kd, mag90-ft), not timed separately.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "resnet"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--dense-epochs", type=int, default=10)
    ap.add_argument("--recover-epochs", type=int, default=5)
    ap.add_argument("--unstructured-epochs", type=int, default=4, help="fine-tune epochs after each unstructured step")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--recover-lr", type=float, default=3e-3)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--no-scratch-kd", dest="scratch_kd", action="store_false",
                    help="skip the second control (the 75 %% architecture distilled from the dense model, from scratch)")
    ap.add_argument("--scratch-all", action="store_true", help="from-scratch control for the 50 %% rows too (default: 75 %% only)")
    ap.add_argument("--bn-batches", type=int, default=8, help="BatchNorm recalibration batches after pruning (0: off)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and latency")
    ap.add_argument("--latency-rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes for the training phase (one thread each)")
    ap.add_argument("--quick", action="store_true", help="smoke run: cnn, 1 seed, 1 epoch")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.quick:
        args.models, args.seeds, args.dense_epochs, args.recover_epochs, args.unstructured_epochs = ["cnn"], 1, 1, 1, 1
        args.latency_rounds, args.repeats = 1, 5
    cfg = {k: v for k, v in vars(args).items() if k not in ("out",)}
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="prune-digits-")
    work = tmp.name
    units = [(m, s) for s in range(args.seeds) for m in sorted(args.models, key=lambda n: n != "resnet")]
    results: list[dict[str, Any]] = []
    if args.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(run_unit, m, s, cfg, work if s == 0 else None) for m, s in units]
            for f in futs:
                results.append(f.result())
                print(f"[prune_digits] {results[-1]['model']} seed {results[-1]['seed']}: {results[-1]['wall_s']} s", file=sys.stderr, flush=True)
    else:
        for m, s in units:
            results.append(run_unit(m, s, cfg, work if s == 0 else None))
            print(f"[prune_digits] {m} seed {s}: {results[-1]['wall_s']} s", file=sys.stderr, flush=True)
    t_train = time.perf_counter() - t_start
    torch.set_num_threads(args.threads)
    prof = {}
    for m in args.models:
        prof[m] = profile_models(Path(work) / m, list(PROFILED), args.latency_rounds, args.repeats, args.threads)
    tmp.cleanup()
    models = aggregate(results, prof)
    from condense.evaluate.profile import environment

    report = {
        "benchmark": "prune_digits", "config": cfg, "split": "load_dataset('digits', seed=0): fixed; seeds vary training only",
        "environment": environment(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "wall_time_s": round(time.perf_counter() - t_start, 1), "train_phase_s": round(t_train, 1),
        "models": models, "targets": check_targets(models) if not args.quick else [], "units": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    print(markdown(models))
    for c in report["targets"]:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['model']}: {c['check']}  (value {c['value']:.3f})")
    print(f"\nwall time {report['wall_time_s']} s (training {report['train_phase_s']} s); load average "
          f"{load_start[0]:.1f} at start, {report['load_average_end'][0]:.1f} at end; results: {out}")


if __name__ == "__main__":
    main()
