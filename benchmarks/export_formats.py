"""Deployed files per format: bytes, test accuracy and batch-1 latency in each format's own runtime.

Models: the demo recipe's teacher (fp32), its final student (distilled, channel-pruned, fp32) and
that student after static int8 (`recipes/demo.yaml`, run here into a temporary folder). Each model
is exported with `condense.export.export` to every format whose runtime is installed (onnx,
pt2, executorch; tflite when litert-torch is installed), each parity-checked by `export`. Test
accuracy of each file is computed by running it sample by sample in its runtime (359 digits test
images). Latency: batch 1, the runtimes of one model timed in one process in randomly interleaved
rounds (`interleaved_latency`), medians and minima, at 1 and 2 threads (every runtime set to the
same count; one block per count).

    python benchmarks/export_formats.py [--json benchmarks/results/export_formats.json] [--repeats 300]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from condense.artifacts import load
from condense.data import load_dataset
from condense.data.loader import example_inputs
from condense.demo import run_demo
from condense.export import export
from condense.export.formats import batch_items, load_runner, runtime_threads
from condense.quantize import interleaved_latency


def available_formats() -> list[str]:
    fmts = ["onnx", "pt2"]
    if importlib.util.find_spec("executorch") is not None:
        fmts.append("executorch")
    if importlib.util.find_spec("litert_torch") is not None:
        fmts.append("tflite")
    return fmts


def set_threads(n: int) -> None:
    """The same thread count for every runtime: torch's intra-op pool and ExecuTorch's thread pool
    (ONNX Runtime and LiteRT take theirs per session in `load_runner`)."""
    torch.set_num_threads(n)
    if importlib.util.find_spec("executorch") is not None:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(n)  # ExecuTorch's only setter (pybindings, 1.5)


def accuracy(runner, items, labels) -> float:
    pred = torch.cat([runner(x).reshape(1, -1).argmax(1) for x in items])
    return float((pred == labels).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="intra-op threads of every runtime, one timing block each")
    ap.add_argument("--minilm", action="store_true",
                    help="only the MiniLM encoder (fp32 pt2 / executorch, int8 executorch attempt), merged into --json")
    ap.add_argument("--run", default=None, help="an existing demo run folder (default: run the demo now)")
    args = ap.parse_args()
    if args.minilm:
        return minilm(args.json)
    tmp = Path(tempfile.mkdtemp(prefix="condense-export-bench-"))
    run = Path(args.run) if args.run else tmp / "demo"
    if not args.run:
        run_demo(run, quiet=True)
    splits = load_dataset("digits")
    items = batch_items(example_inputs(splits.test, len(splits.test)))
    labels = splits.test.targets  # digits: an in-memory ArrayDataset, same order as example_inputs
    example = items[0]
    folders = {p.name.split("-", 1)[1]: p for p in sorted(run.iterdir()) if p.is_dir() and "-" in p.name}
    models = {"teacher fp32": folders["teacher"], "student fp32 (distilled, pruned)": folders["pruned"],
              "student int8": folders["int8"]}
    formats = available_formats()
    rows = []
    for label, folder in models.items():
        model = load(folder)
        results = {}
        for fmt in formats:
            path = tmp / f"{folder.name}{'.pte' if fmt == 'executorch' else '.' + fmt}"
            t0 = time.perf_counter()
            res = export(model, example, path, fmt, calibration=splits.train, samples=splits.test, latency=False)
            results[fmt] = (res, time.perf_counter() - t0)
        for threads in args.threads:
            set_threads(threads)
            runners = {fmt: load_runner(results[fmt][0].path, fmt, threads=threads) for fmt in formats}
            lat = interleaved_latency(runners, items[:64], repeats=args.repeats, warmup=20)
            for fmt in formats:
                res, secs = results[fmt]
                rows.append({
                    "model": label, "format": fmt, "precision": res.precision, "runtime": res.runtime,
                    "bytes": res.bytes, "test_accuracy": accuracy(runners[fmt], items, labels),
                    "top1_agreement_vs_torch": res.top1_agreement, "max_abs_diff_vs_torch": res.max_abs_diff,
                    "threads": runtime_threads(fmt, threads), "latency_p50_ms": lat[fmt]["wall_ms"], "latency_min_ms": lat[fmt]["min_ms"],
                    "cpu_p50_ms": lat[fmt]["cpu_ms"], "export_s": round(secs, 1), "notes": res.notes,
                })
                r = rows[-1]
                print(f"{label:34s} {fmt:10s} {r['precision']:5s} {r['bytes']:>10,} B  acc {r['test_accuracy']:.4f}  "
                      f"p50 {r['latency_p50_ms']:.4f} ms  min {r['latency_min_ms']:.4f} ({r['runtime']}, {threads} threads)",
                      flush=True)
    out = {"rows": rows, "repeats": args.repeats, "formats": formats, "machine": platform.platform(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "versions": {m: _version(m) for m in ("onnxruntime", "executorch", "litert_torch", "ai_edge_litert")}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


def minilm(json_path: str | None) -> None:
    """all-MiniLM-L6-v2 through export(): 4 sentences padded to 32 tokens, batch-1 latency from
    export()'s own timer (30 runs, one format at a time), machine's thread count."""
    from transformers import AutoTokenizer

    from condense.core.errors import CondenseError
    from condense.models import build_model
    from condense.models.hf_folder import minilm_dir

    model = build_model(f"hf:{minilm_dir()}").eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    texts = ["The quick brown fox jumps over the lazy dog.", "Export a sentence encoder to a phone.",
             "int8 kernels", "pydoc topics"]
    enc = tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    example = {k: v[:1] for k, v in batch.items()}
    tmp = Path(tempfile.mkdtemp(prefix="condense-export-minilm-"))
    rows = []
    for fmt, prec in (("onnx", "fp32"), ("pt2", "fp32"), ("executorch", "fp32"), ("executorch", "int8")):
        try:
            r = export(model, example, tmp / f"minilm.{prec}{'.pte' if fmt == 'executorch' else '.' + fmt}", fmt,
                       precision=prec, calibration=batch, samples=batch, atol=1e-3)
            row = {"format": fmt, "precision": prec, **{k: v for k, v in r.to_dict().items() if k != "path"}}
        except CondenseError as e:
            row = {"format": fmt, "precision": prec, "error": str(e)}
        rows.append(row)
        print(row, flush=True)
    if json_path:
        p = Path(json_path)
        data = json.loads(p.read_text()) if p.exists() else {}
        data["minilm"] = rows
        p.write_text(json.dumps(data, indent=1) + "\n")


def _version(module: str) -> str | None:
    from importlib import metadata

    name = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert"}.get(module, module)
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
