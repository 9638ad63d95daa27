"""BERT -> small BERT on a 2-core CPU: distil all-MiniLM-L6-v2 into fewer layers, prune heads and
FFN, quantize to int8, and measure every step against the 6-layer fp32 teacher.

Data: the `stdlib-text` source (`task: corpus`): docstring paragraphs of Python's standard
library and the pydoc topics, parsed with `ast` (nothing downloaded), a seeded sample of
`--limit` paragraphs, split by module so the test paragraphs come from modules never seen in
training. Tokenized at `--max-length` tokens.

Rows (each measured as the ONNX file ONNX Runtime runs, on the held-out test paragraphs):
  teacher fp32 / teacher int8 (library `export_transformer_int8`, default settings)
  L3 copy / L3 distilled, L2 copy / L2 distilled: layers copied from the teacher
      (`build_model("hf:...", layers=N)`, evenly spread), without training (the control) and
      after `distill(...)` with the cosine embedding loss (Reimers & Gurevych 2020)
  L3 pruned: the distilled L3 with 30 % of heads and 25 % of FFN neurons removed
      (`prune(method="transformer")`), recovered by distillation from the unpruned L3
  chain: L3 pruned -> int8
Metrics vs the teacher's fp32 embeddings: mean / min cosine, top-10 neighbour overlap;
file bytes; median latency at batch 1 and batch 32 in ONNX Runtime (1 intra-op thread, all
sessions timed in one process in random interleaved order: `interleaved_latency`).

    python benchmarks/nlp_distill.py [--limit 4000] [--epochs 2] [--json benchmarks/results/nlp_distill.json]
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
from condense.models.hf import minilm_dir
from condense.quantize.graph.onnx_int8 import interleaved_latency
from condense.quantize.transformer import export_transformer_int8

TARGETS = {"L3 distilled": {"mean_cosine": 0.95, "topk_overlap": 0.75},
           "chain": {"latency_b1_ratio": 0.25, "bytes": 12_000_000, "mean_cosine": 0.93},
           "chain + vocab trim": {"latency_b1_ratio": 0.25, "bytes": 12_000_000, "mean_cosine": 0.93}}


def session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feeds_of(sess: Any, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return {k: v.numpy() for k, v in batch.items() if k in names}


def prune_chain(student: Any, splits: Any, example: Any, args: Any, times: dict[str, float]) -> tuple[Any, ...]:
    """The distilled L3 with 30 % of heads and 25 % of FFN removed, recovered by distillation from
    it; and that model with its vocabulary trimmed to the training paragraphs' tokens."""
    from condense.prune import PruneConfig, VocabConfig
    from condense.prune.recover import RecoverConfig, prune_and_recover

    t0 = time.perf_counter()
    base = copy.deepcopy(student)  # prune_and_recover edits its model in place
    pcfg = PruneConfig.from_dict({"method": "transformer", "heads": 0.3, "ffn": 0.25, "importance": "gradient"})
    rcfg = RecoverConfig.from_dict({"method": "distill", "train": {"epochs": args.recover_epochs, "lr": 1e-4,
                                                                   "batch_size": 32, "progress": "off"}})
    pruned, prune_info = prune_and_recover(base, pcfg, rcfg, splits.train, splits.val, example_inputs=example)
    times["prune+recover_s"] = round(time.perf_counter() - t0, 1)
    print(f"pruned + recovered in {times['prune+recover_s']} s", flush=True)
    # vocabulary trimming: keep the embedding rows of the tokens the training paragraphs use; the
    # held-out modules' other tokens go to [UNK] (what that costs is measured)
    trimmed = condense.prune(copy.deepcopy(pruned), VocabConfig(), data=splits.train)
    vocab_report = trimmed.condense_vocab_report
    print(f"vocabulary: kept {vocab_report['kept']} of {vocab_report['vocab_size']} tokens", flush=True)
    return pruned, trimmed, prune_info, vocab_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=4000)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--recover-epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--students", default="3,2", help="student depths to distil (comma-separated)")
    ap.add_argument("--no-chain", action="store_true", help="skip prune / vocab trim / int8 (the students only)")
    ap.add_argument("--extra-packages", default="",
                    help="more training text: docstrings of these installed packages (comma-separated; "
                         "val / test stay the standard library's)")
    ap.add_argument("--extra-limit", type=int, default=None, help="a seeded sample of the extra paragraphs")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "nlp_distill.json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.perf_counter()
    folder = minilm_dir()
    extra = [p for p in args.extra_packages.split(",") if p]
    splits = condense.load_dataset("stdlib-text", task="corpus", limit=args.limit, max_length=args.max_length,
                                   tokenizer=str(folder), extra_packages=extra or None, extra_limit=args.extra_limit)
    print(f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test paragraphs "
          f"(extra training paragraphs: {splits.info.get('extra_paragraphs', {})})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="nlp_distill_"))
    teacher = condense.build_model(f"hf:{folder}")
    models: dict[str, Any] = {"teacher fp32": teacher}
    times: dict[str, float] = {}

    def distilled(layers: int) -> Any:
        torch.manual_seed(0)
        student = condense.build_model(f"hf:{folder}", layers=layers)
        cfg = condense.DistillConfig(losses=[{"name": "embedding", "kind": "cosine"}],
                                     train=condense.TrainConfig(epochs=args.epochs, batch_size=32, lr=args.lr,
                                                                warmup_steps=20, progress="off",
                                                                checkpoint_dir=str(work / f"ckpt{layers}")))
        t0 = time.perf_counter()
        out = condense.distill(student, teacher, splits.train, cfg, splits.val)
        times[f"L{layers} distill_s"] = round(time.perf_counter() - t0, 1)
        return out

    for layers in (int(n) for n in args.students.split(",")):
        models[f"L{layers} copy"] = condense.build_model(f"hf:{folder}", layers=layers)
        models[f"L{layers} distilled"] = distilled(layers)
        print(f"L{layers} distilled in {times[f'L{layers} distill_s']} s", flush=True)
    example = condense.example_inputs(splits.test, 1)
    vocab_report: dict[str, Any] = {}
    prune_info: Any = None
    int8_rows = {"teacher int8": teacher}
    if not args.no_chain:
        pruned, trimmed, prune_info, vocab_report = prune_chain(models["L3 distilled"], splits, example, args, times)
        models["L3 pruned"] = pruned
        int8_rows.update({"chain": pruned, "chain + vocab trim": trimmed})
    # ONNX files: fp32 export of each model, int8 of the teacher and of the pruned students
    files: dict[str, Path] = {}
    for name, m in models.items():
        files[name] = Path(condense.export_onnx(m, example, work / f"{name.replace(' ', '_')}.onnx").path)
    for name, m in int8_rows.items():
        res = export_transformer_int8(m, work / f"{name.replace(' ', '_')}.int8.onnx", calibration=splits.train,
                                      example=example)
        files[name] = Path(res.path)

    # embeddings on the held-out paragraphs, all compared with the teacher fp32 ONNX
    ref = condense.evaluate(str(files["teacher fp32"]), splits.test, reference=teacher)["reference"]
    rows: dict[str, dict[str, Any]] = {}
    for name, path in files.items():
        r = condense.evaluate(str(path), splits.test, reference=teacher)["reference"]
        rows[name] = {"mean_cosine": r["mean_cosine"], "min_cosine": r["min_cosine"], "p01_cosine": r["p01_cosine"],
                      "topk_overlap": r["topk_overlap"], "bytes": path.stat().st_size}
    rows["teacher fp32"]["check_vs_torch"] = ref["mean_cosine"]

    # latency: batch 1 (one real paragraph per call, rotating) and batch 32 (real paragraphs)
    src = as_source(splits.test)
    singles = [b for b, _ in zip(src.batches(1), range(50), strict=False)]
    thirty_two = [b for b, _ in zip(src.batches(32), range(8), strict=False)]
    sessions = {name: session(p) for name, p in files.items()}
    for bs, batches in ((1, singles), (32, thirty_two)):
        runs = {name: (lambda feed, s=s: s.run(None, feeds_of(s, feed))) for name, s in sessions.items()}
        lat = interleaved_latency(runs, batches, repeats=args.repeats if bs == 1 else max(10, args.repeats // 4))
        for name, v in lat.items():
            rows[name][f"latency_b{bs}_ms"] = v["wall_ms"]
    t1 = rows["teacher fp32"]
    for r in rows.values():
        for bs in (1, 32):
            r[f"latency_b{bs}_ratio"] = r[f"latency_b{bs}_ms"] / t1[f"latency_b{bs}_ms"]
        r["bytes_ratio"] = r["bytes"] / t1["bytes"]
    verdicts = {}
    for name, want in TARGETS.items():
        if name not in rows:
            continue
        got = rows[name]
        verdicts[name] = {k: {"target": v, "got": got[k],
                              "met": got[k] >= v if k in ("mean_cosine", "topk_overlap") else got[k] <= v}
                          for k, v in want.items()}
    result = {
        "rows": rows, "targets": verdicts, "times_s": times, "prune": prune_info if isinstance(prune_info, dict) else str(prune_info),
        "vocab": vocab_report,
        "settings": vars(args), "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                                         "extra_paragraphs": splits.info.get("extra_paragraphs", {})},
        "machine": {"cpu": cpu_record(), "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "loadavg_end": os.getloadavg()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_json(args.json, json.loads(json.dumps(result, default=str)))
    print(f"{'row':14s} {'cos':>7s} {'min':>7s} {'top10':>6s} {'MB':>7s} {'b1 ms':>7s} {'b32 ms':>8s}")
    for name, r in rows.items():
        print(f"{name:14s} {r['mean_cosine']:7.4f} {r['min_cosine']:7.4f} {r['topk_overlap']:6.3f} "
              f"{r['bytes'] / 1e6:7.1f} {r['latency_b1_ms']:7.2f} {r['latency_b32_ms']:8.1f}")
    print(json.dumps(verdicts, indent=1))


if __name__ == "__main__":
    main()
