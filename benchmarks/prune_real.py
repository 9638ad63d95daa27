"""Issue 25: real trained models pruned end to end through the torch.export dependency engine.

1. ResNet-20 (zoo `resnet`, defaults) trained on sklearn's 8x8 digits (`load_dataset("digits",
   seed=0)`, fixed split; the training seed varies 0..N-1), exactly as `prune_digits.py` does for
   its `ch50-kd` row: dense 10 epochs (AdamW 3e-3, cosine, best on validation), channel pruning
   (L1, layer scope, `round_to` 8, `target_macs` 0.5), BatchNorm re-estimated on 8 batches,
   5 epochs of distillation from the unpruned model (alpha 0.9, T 4, last epoch). Test accuracy
   dense / pruned before recovery (as cut, and after the BatchNorm re-estimate: the same pruning
   redone with `prune(..., recalibrate=False)` + `recalibrate_batchnorm`) / recovered, params,
   MACs, and ONNX Runtime batch-1 latency (`condense.evaluate.profile`, one thread; dense and
   pruned interleaved over rounds, median of per-round medians, ratio = median over rounds).
   Compared per seed with `benchmarks/results/prune_digits.json` (the old torch.fx engine).
2. all-MiniLM-L6-v2 (the real pretrained weights, `hf:` sentence-embedding), 30 % of heads and
   25 % of FFN neurons removed two ways at the same budget: the dependency engine
   (`ChannelConfig` with per-group `ratios` on the query / intermediate groups, L2 importance)
   and the hand-written BERT path (`method: transformer`, importance "weight", default global
   head scope; and `head_scope: layer`, the same per-layer head count as the channel engine).
   Measured on the held-out `stdlib-text` paragraphs (modules never seen in training, as
   `nlp_distill.py`): mean / min cosine of the ONNX file's embeddings to the unpruned torch
   model's, params, ONNX Runtime batch-1 latency at `--seq-len` tokens (profile, one thread,
   interleaved rounds). Then a short distillation recovery (cosine embedding loss, from the
   unpruned model) of the channel-pruned and the transformer-pruned models. Which heads / FFN
   neurons each method removes is compared (Jaccard overlap of the removed sets).

    python benchmarks/prune_real.py             # full: 3 seeds, 1 recovery epoch for MiniLM
    python benchmarks/prune_real.py --quick     # smoke: 1 seed, 2+1 epochs, 600 paragraphs, 20 KD steps
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "prune_real.json"
PUBLISHED = Path(__file__).resolve().parent / "results" / "prune_digits.json"
HEADS = "re:.*attention\\.self\\.query$"
FFN = "re:.*intermediate\\.dense$"


def _interleaved_ort(models: dict[str, Any], example: Any, onnx: dict[str, Path], rounds: int, repeats: int,
                     seq_len: int | None = None) -> dict[str, Any]:
    """ORT batch-1 p50 per model per round (models in turn each round); medians and ratios to the first."""
    from condense.evaluate import profile

    per: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(rounds):
        for n, m in models.items():
            p = profile(m, example, runtimes=("onnxruntime",), batch_sizes=(1,), threads=1, onnx_path=onnx[n],
                        warmup=5, repeats=repeats, seq_len=seq_len)
            per[n].append(p["latency"]["onnxruntime"]["1"]["p50_ms"])
    base = per[next(iter(models))]
    return {n: {"ort_b1_ms": statistics.median(v), "ort_b1_ratio": statistics.median(a / b for a, b in zip(v, base, strict=True)),
                "ort_b1_rounds_ms": v} for n, v in per.items()}


def resnet_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from condense.data import load_dataset
    from condense.evaluate import evaluate
    from condense.export import export_onnx
    from condense.models import build_model
    from condense.prune import ChannelConfig, count_macs, prune
    from condense.prune.recover import RecoverConfig, prune_and_recover
    from condense.prune.report import count_params
    from condense.train import TrainConfig, train_model
    from condense.train.recover import recalibrate_batchnorm

    splits = load_dataset("digits", seed=0)
    x1 = splits.test.inputs[:1]
    kwargs = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    pcfg = ChannelConfig(importance="l1", round_to=8)
    units, keep_models = [], {}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        dense_cfg = TrainConfig(epochs=args.dense_epochs, batch_size=64, lr=3e-3, warmup_steps=20, seed=seed, progress="off")
        rec_train = TrainConfig(epochs=args.recover_epochs, batch_size=64, lr=3e-3, warmup_steps=10, seed=seed,
                                progress="off", select_best="last")
        torch.manual_seed(seed)
        dense = train_model(build_model("resnet", **kwargs), splits.train, dense_cfg, splits.val).model
        acc = lambda m: float(evaluate(m, splits.test)["accuracy"])  # noqa: E731
        u: dict[str, Any] = {"seed": seed, "dense": {"test_accuracy": acc(dense), "params": count_params(dense),
                                                     "macs": count_macs(dense, x1)}}
        # pruned before recovery: the same cut prune_and_recover makes, measured on the test split
        rcfg = RecoverConfig(method="distill", alpha=0.9, temperature=4.0, train=rec_train, bn_batches=8)
        recovered, info = prune_and_recover(copy.deepcopy(dense), pcfg, rcfg, splits.train, splits.val, x1, target_macs=0.5)
        cut = prune(copy.deepcopy(dense), pcfg.replace(ratio=info["channel_ratio"]), x1, recalibrate=False)
        u["pruned"] = {"test_accuracy": acc(cut)}
        recalibrate_batchnorm(cut, splits.train, 8, 64, seed)
        u["pruned_bn"] = {"test_accuracy": acc(cut)}
        u["recovered"] = {"test_accuracy": acc(recovered), "params": count_params(recovered), "macs": count_macs(recovered, x1)}
        u["channel_ratio"] = info["channel_ratio"]
        u["same_cut_as_recovered"] = cut.condense_edits == recovered.condense_edits
        u["widths"] = {g["root"]: len(g["keep"]) for e in recovered.condense_edits if e["kind"] == "prune_channels"
                       for g in e["params"]["groups"]}
        u["wall_s"] = round(time.perf_counter() - t0, 1)
        units.append(u)
        print(f"resnet seed {seed}: dense {u['dense']['test_accuracy']:.4f} cut {u['pruned']['test_accuracy']:.4f} "
              f"bn {u['pruned_bn']['test_accuracy']:.4f} recovered {u['recovered']['test_accuracy']:.4f} ({u['wall_s']} s)",
              flush=True)
        if seed == 0:
            keep_models = {"dense": dense, "ch50-kd": recovered}
    onnx = {n: Path(export_onnx(m, x1, work / f"resnet_{n}.onnx").path) for n, m in keep_models.items()}
    lat = _interleaved_ort(keep_models, x1, onnx, args.rounds, args.repeats)

    out: dict[str, Any] = {"units": units, "latency_seed0": lat}
    rows = {}
    for key in ("dense", "pruned", "pruned_bn", "recovered"):
        a = [u[key]["test_accuracy"] for u in units]
        rows[key] = {"mean": statistics.fmean(a), "std": statistics.stdev(a) if len(a) > 1 else 0.0, "per_seed": a}
    out["test_accuracy"] = rows
    if PUBLISHED.exists():  # the old engine's published rows, same seeds
        pub = json.loads(PUBLISHED.read_text())["models"]["resnet"]["rows"]
        n = len(units)
        old = {"dense": pub["dense"]["test_accuracy"]["per_seed"][:n], "recovered": pub["ch50-kd"]["test_accuracy"]["per_seed"][:n],
               "params": pub["ch50-kd"]["params"], "macs": pub["ch50-kd"]["macs"], "channel_ratio": pub["ch50-kd"].get("channel_ratio"),
               "ort_b1_ratio": pub["ch50-kd"]["latency_ratio"]["onnxruntime"]["1"],
               "ort_b1_ms": pub["ch50-kd"]["latency_ms"]["onnxruntime"]["1"],
               "dense_ort_b1_ms": pub["dense"]["latency_ms"]["onnxruntime"]["1"]}
        out["published_old_engine"] = old
        out["vs_published"] = {
            "params_equal": old["params"] == units[0]["recovered"]["params"],
            "macs_equal": old["macs"] == units[0]["recovered"]["macs"],
            "dense_per_seed_diff_pt": [100 * (u["dense"]["test_accuracy"] - o) for u, o in zip(units, old["dense"], strict=True)],
            "recovered_per_seed_diff_pt": [100 * (u["recovered"]["test_accuracy"] - o)
                                           for u, o in zip(units, old["recovered"], strict=True)],
        }
    return out


def _removed_sets(model: Any, pruned_ch: Any, cfg_layer: dict[str, Any]) -> dict[str, Any]:
    """Heads / FFN neurons each method removes (original numbering), per layer, and their overlap."""
    from condense.prune import transformer_importance
    from condense.prune.config import TransformerConfig
    from condense.prune.heads import blocks_of
    from condense.prune.transformer import choose_heads, choose_neurons

    blocks = blocks_of(model)
    tcfg = TransformerConfig.from_dict(cfg_layer)
    h, n = transformer_importance(model, tcfg)
    heads_tr = choose_heads(blocks, h, tcfg)
    _, kept_tr = choose_neurons(blocks, n, tcfg)
    groups = {g["root"]: g for e in pruned_ch.condense_edits if e["kind"] == "prune_channels" for g in e["params"]["groups"]}
    out: dict[str, Any] = {"layers": {}}
    jh, jn = [], []
    for b in blocks:
        q = next(g for r, g in groups.items() if r.endswith(f"layer.{b.index}.attention.self.query"))
        f = next(g for r, g in groups.items() if r.endswith(f"layer.{b.index}.intermediate.dense"))
        ch_h = set(range(q["size"])) - set(q["keep"])
        tr_h = set(heads_tr[b.index])
        ch_n = set(range(f["size"])) - set(f["keep"])
        tr_n = set(range(f["size"])) - set(kept_tr[b.index])
        jh.append(len(ch_h & tr_h) / max(len(ch_h | tr_h), 1))
        jn.append(len(ch_n & tr_n) / max(len(ch_n | tr_n), 1))
        out["layers"][str(b.index)] = {"heads_removed_channel": sorted(ch_h), "heads_removed_transformer": sorted(tr_h),
                                       "heads_jaccard": jh[-1], "ffn_removed_both": len(ch_n & tr_n),
                                       "ffn_removed_channel": len(ch_n), "ffn_jaccard": jn[-1]}
    out["heads_jaccard_mean"] = statistics.fmean(jh)
    out["ffn_jaccard_mean"] = statistics.fmean(jn)
    return out


def minilm_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import condense
    from condense.export import export_onnx
    from condense.models.hf_folder import minilm_dir
    from condense.prune import ChannelConfig, prune
    from condense.prune.report import count_params

    folder = minilm_dir()
    splits = condense.load_dataset("stdlib-text", task="corpus", limit=args.limit, max_length=args.max_length,
                                   tokenizer=str(folder))
    print(f"minilm data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test paragraphs", flush=True)
    teacher = condense.build_model(f"hf:{folder}", task="sentence-embedding").eval()
    ex2 = condense.example_inputs(splits.test, 2)
    ex1 = condense.example_inputs(splits.test, 1)
    t_layer = {"method": "transformer", "heads": 0.3, "ffn": 0.25, "importance": "weight", "head_scope": "layer"}
    times: dict[str, float] = {}
    models: dict[str, Any] = {"dense": teacher}
    t0 = time.perf_counter()
    models["channel (engine, l2)"] = prune(copy.deepcopy(teacher), ChannelConfig(ratio=0.0, ratios={HEADS: 0.3, FFN: 0.25},
                                                                                 importance="l2"), example_inputs=ex2)
    times["prune_channel_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    models["transformer (weight, global)"] = prune(copy.deepcopy(teacher), {"method": "transformer", "heads": 0.3, "ffn": 0.25,
                                                                             "importance": "weight"})
    times["prune_transformer_s"] = round(time.perf_counter() - t0, 1)
    models["transformer (weight, layer)"] = prune(copy.deepcopy(teacher), t_layer)
    overlap = _removed_sets(teacher, models["channel (engine, l2)"], t_layer)

    def kd(student: Any, tag: str) -> Any:
        cfg = condense.DistillConfig(losses=[{"name": "embedding", "kind": "cosine"}],
                                     train=condense.TrainConfig(epochs=args.kd_epochs, max_steps=args.kd_steps, batch_size=32,
                                                                lr=1e-4, warmup_steps=10, progress="off", seed=0,
                                                                checkpoint_dir=str(work / f"ckpt_{tag}")))
        t = time.perf_counter()
        out = condense.distill(copy.deepcopy(student), teacher, splits.train, cfg, splits.val)
        times[f"kd_{tag}_s"] = round(time.perf_counter() - t, 1)
        return out

    if args.kd_epochs > 0:
        models["channel + KD"] = kd(models["channel (engine, l2)"], "channel")
        models["transformer (global) + KD"] = kd(models["transformer (weight, global)"], "transformer")
    onnx = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        m.eval()
        onnx[name] = Path(export_onnx(m, ex1, work / f"minilm_{len(onnx)}.onnx").path)
        r = condense.evaluate(str(onnx[name]), splits.test, reference=teacher)["reference"]
        rows[name] = {"mean_cosine": r["mean_cosine"], "min_cosine": r["min_cosine"], "topk_overlap": r.get("topk_overlap"),
                      "params": count_params(m), "onnx_bytes": onnx[name].stat().st_size}
        print(f"minilm {name}: cos {r['mean_cosine']:.4f} params {rows[name]['params']:,}", flush=True)
    arch = {"dense": "dense", "channel (engine, l2)": "channel (engine, l2)", "transformer (weight, global)": "transformer (weight, global)"}
    lat = _interleaved_ort({k: models[k] for k in arch}, ex1, {k: onnx[k] for k in arch}, args.rounds, args.repeats,
                           seq_len=args.seq_len)
    twin = {"transformer (weight, layer)": "channel (engine, l2)", "channel + KD": "channel (engine, l2)",
            "transformer (global) + KD": "transformer (weight, global)"}
    for name, r in rows.items():
        src = name if name in lat else twin[name]
        r.update({k: v for k, v in lat[src].items()})
        r["latency_measured_on"] = src
    return {"rows": rows, "overlap": overlap, "times_s": times, "seq_len": args.seq_len,
            "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}}


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="stdlib-text paragraphs (default 4000, quick 600)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per sequence for the MiniLM latency")
    ap.add_argument("--parts", default="resnet,minilm")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    q = args.quick
    args.seeds = args.seeds or (1 if q else 3)
    args.rounds = args.rounds or (2 if q else 7)
    args.repeats = args.repeats or (10 if q else 30)
    args.limit = args.limit or (600 if q else 4000)
    args.dense_epochs, args.recover_epochs = (2, 1) if q else (10, 5)
    args.kd_epochs, args.kd_steps = (1, 20) if q else (1, None)
    args.json = args.json or str(RESULTS.with_name("prune_real_quick.json") if q else RESULTS)
    torch.set_num_threads(1)
    from condense.core.io import atomic_write_json

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="prune_real_"))
    result: dict[str, Any] = {"benchmark": "prune_real", "settings": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": 1, "ort_threads": 1,
                                          "torch": torch.__version__, "platform": platform.platform(),
                                          "loadavg_start": os.getloadavg()}}
    try:
        import onnxruntime

        result["machine"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    parts = [p for p in args.parts.split(",") if p]
    for part, fn in (("resnet", resnet_part), ("minilm", minilm_part)):
        if part not in parts:
            continue
        t0 = time.perf_counter()
        try:
            result[part] = fn(args, work)
        except Exception as e:  # recorded, not hidden
            import traceback

            traceback.print_exc()
            result[part] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        result[part]["wall_s"] = round(time.perf_counter() - t0, 1)
        result["machine"]["loadavg_end"] = os.getloadavg()
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        atomic_write_json(args.json, json.loads(json.dumps(result, default=str)))
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    r = result.get("resnet", {})
    if "test_accuracy" in r:
        ta, u0 = r["test_accuracy"], r["units"][0]
        print("\nResNet-20 on digits, ch50-kd (target_macs 0.5), test accuracy % (mean +- std over seeds)")
        print(f"{'row':24s} {'acc %':>15s} {'params':>9s} {'MACs':>10s} {'ORT b1 ms':>10s} {'ratio':>6s}")
        lat = r["latency_seed0"]
        for key, label, m in (("dense", "dense", "dense"), ("pruned", "pruned (as cut)", None),
                              ("pruned_bn", "pruned + BN re-estimate", None), ("recovered", f"recovered (KD {result['settings']['recover_epochs']} ep)", "recovered")):
            a = ta[key]
            size = u0[m] if m else u0["recovered"]
            lk = "dense" if key == "dense" else "ch50-kd"
            print(f"{label:24s} {100 * a['mean']:7.2f} +- {100 * a['std']:4.2f} {size['params']:9,d} {size['macs']:10,d} "
                  f"{lat[lk]['ort_b1_ms']:10.4f} {lat[lk]['ort_b1_ratio']:6.2f}")
        if "vs_published" in r:
            print(f"vs published (old engine): {r['vs_published']}")
    elif r:
        print(f"resnet: {r.get('error')}")
    m = result.get("minilm", {})
    if "rows" in m:
        print(f"\nall-MiniLM-L6-v2, held-out stdlib-text ({m['data']['test']} paragraphs); ORT batch 1 at {m['seq_len']} tokens, 1 thread")
        print(f"{'row':30s} {'mean cos':>9s} {'min cos':>8s} {'params':>11s} {'ORT b1 ms':>10s} {'ratio':>6s}")
        for name, row in m["rows"].items():
            print(f"{name:30s} {row['mean_cosine']:9.4f} {row['min_cosine']:8.4f} {row['params']:11,d} {row['ort_b1_ms']:10.3f} "
                  f"{row['ort_b1_ratio']:6.2f}")
        ov = m["overlap"]
        print(f"removed-set overlap channel vs transformer(layer): heads Jaccard {ov['heads_jaccard_mean']:.2f}, "
              f"FFN Jaccard {ov['ffn_jaccard_mean']:.2f}")
    elif m:
        print(f"minilm: {m.get('error')}")


if __name__ == "__main__":
    main()
