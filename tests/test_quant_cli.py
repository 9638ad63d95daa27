"""`condense quantize`: every method end to end on a tiny trained CNN, and bad input -> exit codes.

Runs through the real `condense.cli.main` (same parser, same error -> exit code mapping).
"""
from __future__ import annotations

import json

import pytest
import torch

from condense.core.errors import ConfigError


@pytest.fixture
def cli(capsys):
    """The real `condense` entry point (so an unwired `quantize` command fails these tests)."""
    import condense.cli as C

    def run(*argv):
        code = C.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small CNN (width 16: 16/32/64 channels) trained for a few epochs on digits, saved as an artifact."""
    from condense.artifacts import save
    from condense.data import load_dataset
    from condense.models import build_model
    from condense.train import TrainConfig, train_model

    splits = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=16)
    cfg = TrainConfig(epochs=3, lr=3e-3, batch_size=64, progress="off", select_best="last")
    train_model(model, splits.train, cfg)
    folder = tmp_path_factory.mktemp("quant_cli") / "tiny"
    save(model.eval(), folder, extra={"data": {"name": "digits", "kwargs": {}}})
    return folder


NO_TIMING = "--latency-batches"  # given with no values: skip the onnxruntime timing (fast tests)


def test_static_writes_artifact_and_int8_onnx(cli, tiny, tmp_path):
    out = tmp_path / "static"
    code, stdout, _ = cli("quantize", tiny, "--method", "static", "--observer", "mse", "--out", out,
                          "--latency-batches", "1", "--threads", "1", "--json")
    assert code == 0
    s = json.loads(stdout)
    assert (out / "model.int8.onnx").is_file() and (out / "model.fp32.onnx").is_file()
    assert (out / "model.safetensors").is_file() and (out / "condense.json").is_file()
    assert s["size_ratio"] < 0.5 and s["bytes"]["onnx"] < s["bytes"]["fp32_onnx"]
    assert s["agreement"]["top1_pct"] >= 99.0
    assert abs(s["drop_pt"]) <= 3.0
    assert s["config"]["observer"] == "mse" and s["ort_ops"].get("QLinearConv", 0) >= 1
    assert set(s["latency"]["batches"]) == {"1"} and s["latency"]["batches"]["1"]["int8_ms"] > 0
    # the artifact reloads as the quantized model (edit log replayed) with the same accuracy
    from condense.artifacts import load
    from condense.data import load_dataset
    from condense.evaluate import evaluate
    from condense.quantize import quant_wrappers

    back = load(out)
    assert quant_wrappers(back)
    assert evaluate(back, load_dataset("digits").test)["accuracy"] == pytest.approx(s["accuracy"]["quantized_torch"])
    # text output names the numbers
    code, stdout, _ = cli("quantize", tiny, "--out", tmp_path / "static_text", NO_TIMING)
    assert code == 0 and "accuracy" in stdout and "ratio" in stdout and "top-1" in stdout


def test_static_w4a8_and_per_layer_bits(cli, tiny, tmp_path):
    code, stdout, _ = cli("quantize", tiny, "--weight-bits", "4", "--set", "layer_bits={features.1.0.conv: 2}",
                          "--target", "avx2", "--out", tmp_path / "w4", NO_TIMING, "--json")
    assert code == 0
    s = json.loads(stdout)
    bits = {layer["name"]: layer["weight_bits"] for layer in s["report"]["layers"]}
    # first / last kept at the widest grid that cannot saturate AVX2's int16 pair sums: 7 bits
    assert bits["features.0.0.conv"] == 7 and bits["classifier"] == 7
    assert bits["features.1.0.conv"] == 2 and bits["features.1.1.conv"] == 4
    assert any("int8 containers" in n for n in s["notes"])
    assert s["agreement"]["top1_pct"] >= 99.0


def test_low_bit_activations_are_simulated_only(cli, tiny, tmp_path):
    code, stdout, _ = cli("quantize", tiny, "--bits", "6", "--out", tmp_path / "a6", NO_TIMING, "--json")
    assert code == 0
    s = json.loads(stdout)
    assert s["onnx"] is None and not (tmp_path / "a6" / "model.int8.onnx").exists()
    assert any("simulated only" in n for n in s["notes"]) and s["accuracy"]["quantized_onnxruntime"] is None


def test_weight_only_packs_linear_weights(cli, tiny, tmp_path):
    code, stdout, _ = cli("quantize", tiny, "--method", "weight_only", "--bits", "4", "--group-size", "32",
                          "--out", tmp_path / "wo", NO_TIMING, "--json")
    assert code == 0
    s = json.loads(stdout)
    assert (tmp_path / "wo" / "model.weight_only.onnx").is_file()
    assert s["agreement"]["top1_pct"] == 100.0 and s["agreement"]["max_abs_diff"] < 1e-4
    assert s["bytes"]["onnx"] < s["bytes"]["fp32_onnx"]
    assert any("not speed" in n for n in s["notes"])


def test_qat_distills_and_exports_int8(cli, tiny, tmp_path):
    code, stdout, _ = cli("quantize", tiny, "--method", "qat", "--weight-bits", "4", "--epochs", "1",
                          "--calibration-samples", "64", "--out", tmp_path / "qat", NO_TIMING, "--json")
    assert code == 0
    s = json.loads(stdout)
    assert s["qat"]["distilled"] and (tmp_path / "qat" / "model.int8.onnx").is_file()
    assert s["agreement"]["top1_pct"] >= 99.0 and s["accuracy"]["quantized_onnxruntime"] > 0.3


def test_dynamic_refuses_a_measured_slowdown(cli, tiny, tmp_path, monkeypatch):
    import importlib

    dyn = importlib.import_module("condense.quantize.dynamic")  # `condense.quantize` is the verb

    slow = {"fp32_ms": 1.0, "int8_ms": 3.0, "ratio": 3.0, "threads": 1.0, "repeats": 3.0}
    monkeypatch.setattr(dyn, "measure_speedup", lambda *a, **k: dict(slow))
    out = tmp_path / "dyn"
    code, _, err = cli("quantize", tiny, "--method", "dynamic", "--set", "op_types=[Conv,MatMul]", "--out", out,
                       "--latency-batches", "1")
    assert code == 4 and "slower than fp32" in err and len(err.strip().splitlines()) == 1
    assert not (out / "model.dynamic.onnx").exists() and not (out / "condense.json").exists()
    # --allow-slowdown keeps the file and says so
    code, stdout, _ = cli("quantize", tiny, "--method", "dynamic", "--allow-slowdown", "--out", out,
                          "--latency-batches", "1", "--json")
    assert code == 0
    s = json.loads(stdout)
    assert (out / "model.dynamic.onnx").is_file() and any("slower than fp32" in n for n in s["notes"])
    assert s["latency"]["batches"]["1"]["int8_over_fp32"] == 3.0


@pytest.mark.parametrize("argv, needle", [
    (["--bits", "9"], "--bits must be in 2..8, got 9"),
    (["--weight-bits", "1"], "--weight-bits must be in 2..8"),
    (["--calibration-samples", "0"], "calibration_samples must be >= 1"),
    (["--data-arg", "val_fraction=0", "--calibration-split", "val"], "calibration split 'val' is empty"),
    (["--method", "dynamic", "--bits", "4"], "int8 only"),
    (["--method", "weight_only", "--observer", "mse"], "--observer does not apply"),
    (["--set", "observr=mse"], "observr"),
    (["--observer", "median"], "median"),
    (["--set", "layer_bits={nope: 4}"], "layer_bits names layers that are not quantized: nope"),
])
def test_bad_input_is_exit_2(cli, tiny, tmp_path, argv, needle):
    code, _, err = cli("quantize", tiny, "--out", tmp_path / "bad", NO_TIMING, *argv)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_missing_artifact_is_exit_3(cli, tmp_path):
    code, _, err = cli("quantize", tmp_path / "nope", "--out", tmp_path / "o", NO_TIMING)
    assert code == 3 and "nope" in err


def test_empty_calibration_set_is_a_config_error(tiny):
    from condense.artifacts import load
    from condense.quantize import QuantizeConfig, quantize

    model = load(tiny)
    with pytest.raises(ConfigError, match="empty calibration"):
        quantize(model, QuantizeConfig(), calibration=torch.empty(0, 1, 8, 8))
    with pytest.raises(ConfigError, match="empty calibration"):
        quantize(model, QuantizeConfig(), calibration=[])
