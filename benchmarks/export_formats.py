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
from condense.core.cpu import cpu_record  # noqa: E402
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
                    help="only the MiniLM encoder (every available format, fp32 and int8), merged into --json")
    ap.add_argument("--minilm-static", action="store_true",
                    help="only: MiniLM int8 .pte with the static (calibrated) scheme, cosine to fp32, merged into --json")
    ap.add_argument("--run", default=None, help="an existing demo run folder (default: run the demo now)")
    args = ap.parse_args()
    if args.minilm_static:
        return minilm_static(args.json)
    if args.minilm:
        return minilm(args.json, repeats=min(args.repeats, 60), threads=args.threads[-1])
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
    out = {"rows": rows, "repeats": args.repeats, "formats": formats, "machine": platform.platform(), "cpu": cpu_record(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "versions": {m: _version(m) for m in ("onnxruntime", "executorch", "litert_torch", "ai_edge_litert")}}
    if args.json:  # the MiniLM section (--minilm) of an existing file is kept
        p = Path(args.json)
        old = json.loads(p.read_text()) if p.exists() else {}
        if "minilm" in old:
            out["minilm"] = old["minilm"]
        p.write_text(json.dumps(out, indent=1) + "\n")


def minilm(json_path: str | None, repeats: int = 60, threads: int = 2) -> None:
    """all-MiniLM-L6-v2 in every available format, fp32 and int8, through export(): 4 sentences
    padded to 32 tokens; parity (cosine to PyTorch fp32) on those 4; batch-1 latency interleaved
    across all files in one process (`interleaved_latency`, `repeats` rounds, `threads` threads).
    ONNX int8 is the library's transformer path (`quantize(..., TransformerInt8Config())`)."""
    from transformers import AutoTokenizer

    from condense.core.errors import CondenseError
    from condense.models import build_model
    from condense.models.hf_folder import minilm_dir
    from condense.quantize import quantize
    from condense.quantize.transformer import TransformerInt8Config

    model = build_model(f"hf:{minilm_dir()}").eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    texts = ["The quick brown fox jumps over the lazy dog.", "Export a sentence encoder to a phone.",
             "int8 kernels", "pydoc topics"]
    enc = tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    example = {k: v[:1] for k, v in batch.items()}
    set_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="condense-export-minilm-"))
    planned = quantize(model, TransformerInt8Config(), calibration=batch)  # ONNX int8 comes from its plan
    rows, runners = [], {}
    for fmt in available_formats():
        for prec in ("fp32", "int8"):
            if fmt == "pt2" and prec == "int8":
                continue  # pt2 holds a float program
            source = planned if (fmt, prec) == ("onnx", "int8") else model
            path = tmp / f"minilm.{prec}{'.pte' if fmt == 'executorch' else '.' + fmt}"
            t0 = time.perf_counter()
            try:
                r = export(source, example, path, fmt, precision=prec, calibration=batch, samples=batch,
                           atol=1e-3, latency=False, threads=threads)
                row = {"format": fmt, "precision": prec, "export_s": round(time.perf_counter() - t0, 1),
                       **{k: v for k, v in r.to_dict().items() if k not in ("path", "latency_ms", "latency_p90_ms")}}
                runners[f"{fmt} {prec}"] = load_runner(r.path, fmt, threads=threads)
            except CondenseError as e:
                row = {"format": fmt, "precision": prec, "error": str(e)}
            rows.append(row)
            print(row, flush=True)
    feeds = batch_items(batch)
    lat = interleaved_latency(runners, feeds, repeats=repeats, warmup=5)
    # Each runtime alone too: interleaving seven runtimes' thread pools on a 2-core machine slows
    # every one of them (idle workers of the previous runtime still spin), so the block figures
    # are what one deployed runtime sees; the interleaved ones keep the comparison fair under load.
    block = {k: interleaved_latency({k: r}, feeds, repeats=repeats, warmup=5)[k] for k, r in runners.items()}
    for row in rows:
        key = f"{row['format']} {row['precision']}"
        if key in lat:
            row.update(latency_p50_ms=lat[key]["wall_ms"], latency_min_ms=lat[key]["min_ms"], cpu_p50_ms=lat[key]["cpu_ms"],
                       alone_p50_ms=block[key]["wall_ms"], alone_min_ms=block[key]["min_ms"])
            print(f"{key:18s} {row['bytes']:>12,} B  cos {row['mean_cosine']:.5f}  interleaved p50 "
                  f"{row['latency_p50_ms']:.2f} ms  alone p50 {row['alone_p50_ms']:.2f} ms", flush=True)
    if json_path:
        p = Path(json_path)
        data = json.loads(p.read_text()) if p.exists() else {}
        data["minilm"] = {"rows": rows, "repeats": repeats, "threads": threads, "machine": platform.platform(), "cpu": cpu_record(),
                          "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "versions": {m: _version(m) for m in ("onnxruntime", "executorch", "litert_torch",
                                                                  "ai_edge_litert")}}
        p.write_text(json.dumps(data, indent=1) + "\n")


def minilm_static(json_path: str | None) -> None:
    """Why transformers get the dynamic scheme: MiniLM as an int8 .pte with the static scheme
    (every op, activations calibrated per tensor on the same 4 sentences), checked by cosine to
    PyTorch fp32 on those sentences (no latency)."""
    from transformers import AutoTokenizer

    from condense.export.executorch import export_executorch
    from condense.export.formats import parity
    from condense.models import build_model
    from condense.models.hf_folder import minilm_dir

    model = build_model(f"hf:{minilm_dir()}").eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    texts = ["The quick brown fox jumps over the lazy dog.", "Export a sentence encoder to a phone.",
             "int8 kernels", "pydoc topics"]
    enc = tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    items = batch_items({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    path = Path(tempfile.mkdtemp(prefix="condense-minilm-static-")) / "minilm.static.pte"
    export_executorch(model, items[0], path, precision="int8", calibration=items, scheme="static")
    p = parity(model, load_runner(path, "executorch"), items)
    row = {"format": "executorch", "precision": "int8", "scheme": "static", "bytes": path.stat().st_size,
           "mean_cosine": p["mean_cosine"], "max_abs_diff": p["max_abs_diff"], "samples": p["samples"]}
    print(row, flush=True)
    if json_path:
        jp = Path(json_path)
        data = json.loads(jp.read_text()) if jp.exists() else {}
        data.setdefault("minilm", {})["static_scheme"] = row
        jp.write_text(json.dumps(data, indent=1) + "\n")


def _version(module: str) -> str | None:
    from importlib import metadata

    name = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert"}.get(module, module)
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
