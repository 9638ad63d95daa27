"""Static PTQ (simulated in PyTorch), the edit-log round trip, and the int8 ONNX run by onnxruntime."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.quantize import (
    QuantizeConfig,
    QuantWrapper,
    export_int8_onnx,
    quant_wrappers,
    quantize,
    quantize_static,
)


@pytest.fixture(scope="module")
def digits():
    from condense.data.digits import load_digits

    return load_digits(seed=0)


@pytest.fixture(scope="module")
def trained_cnn(digits):
    """A ~160K-parameter conv net (conv-BN-ReLU x6, GAP, linear) trained for a few dozen steps."""
    from condense.models import build_model
    from condense.train.config import TrainConfig
    from condense.train.fit import train_model

    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=24)
    cfg = TrainConfig(epochs=2, max_steps=40, batch_size=64, lr=3e-3, progress="off", select_best="last")
    train_model(model, digits.train, cfg)
    return model.eval()


@pytest.fixture(scope="module")
def qmodel(trained_cnn, digits):
    return quantize(trained_cnn, QuantizeConfig(calibration_samples=256), calibration=digits.train)


@pytest.fixture(scope="module")
def int8_export(qmodel, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    result = export_int8_onnx(
        qmodel, digits.test.inputs[:1], folder / "model_int8.onnx",
        heldout=digits.test.inputs, fp32_path=folder / "model_fp32.onnx", threads=1,
    )
    return folder, result


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def test_static_ptq_keeps_accuracy_and_agreement(trained_cnn, qmodel, digits):
    x, y = digits.test.inputs, digits.test.targets
    fp32, int8 = _predict(trained_cnn, x), _predict(qmodel, x)
    acc_fp32 = (fp32 == y).float().mean().item()
    acc_int8 = (int8 == y).float().mean().item()
    assert acc_fp32 > 0.85
    assert (fp32 == int8).float().mean().item() >= 0.97
    assert abs(acc_fp32 - acc_int8) <= 0.02


def test_caller_model_is_not_mutated(trained_cnn, qmodel):
    assert not quant_wrappers(trained_cnn)
    assert isinstance(trained_cnn.features[0][0].bn, nn.BatchNorm2d)
    assert all(e["kind"] not in ("fold_bn", "quantize_static") for e in trained_cnn.condense_edits)
    assert [e["kind"] for e in qmodel.condense_edits][-2:] == ["fold_bn", "quantize_static"]


def test_report_folds_bn_and_keeps_first_last_at_8_bits(trained_cnn, digits):
    q = quantize(trained_cnn, {"method": "static", "weight_bits": 4, "calibration_samples": 100, "target": "avx512-vnni"},
                 calibration=[{"input": digits.train.inputs[i : i + 32]} for i in range(0, 320, 32)])
    rep = q.condense_quant_report
    assert rep.calibration_samples == 100 and rep.calibration_batches == 4
    assert len(rep.folded_bn) == 6 and not rep.skipped
    bits = {d["name"]: d["weight_bits"] for d in rep.layers}
    assert bits["features.0.0.conv"] == 8 and bits["classifier"] == 8
    assert bits["features.1.0.conv"] == 4
    layers = {d["name"]: d for d in rep.layers}
    assert layers["features.0.0.conv"]["act"] == "relu" and layers["features.0.0.conv"]["quantize_output"]
    assert not layers["classifier"]["quantize_output"]  # logits stay float
    agree = (_predict(trained_cnn, digits.test.inputs) == _predict(q, digits.test.inputs)).float().mean()
    assert agree >= 0.85


@pytest.mark.parametrize("observer", ["moving_average", "percentile", "mse", "entropy"])
def test_each_observer_calibrates_a_usable_model(trained_cnn, digits, observer):
    q = quantize(trained_cnn, QuantizeConfig(observer=observer, calibration_samples=128),
                 calibration=digits.train)
    agree = (_predict(trained_cnn, digits.test.inputs) == _predict(q, digits.test.inputs)).float().mean()
    assert agree >= 0.93


def test_save_load_round_trip_rebuilds_wrappers(qmodel, digits, tmp_path):
    from condense.artifacts import load, save

    save(qmodel, tmp_path / "art")
    loaded = load(tmp_path / "art")
    wrappers = quant_wrappers(loaded)
    assert set(wrappers) == set(quant_wrappers(qmodel)) and all(w.mode == "quantize" for w in wrappers.values())
    for name, w in wrappers.items():
        ref = quant_wrappers(qmodel)[name]
        assert torch.equal(w.input_fq.scale, ref.input_fq.scale)
        assert torch.equal(w.weight_fq.zero_point, ref.weight_fq.zero_point)
    x = digits.test.inputs[:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def test_int8_onnx_runs_in_onnxruntime_and_matches_simulation(int8_export, qmodel, digits):
    folder, r = int8_export
    assert r.path.is_file() and r.fp32_path.is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["model_fp32.onnx", "model_int8.onnx"]  # no temp files
    assert r.qdq_nodes["QuantizeLinear"] >= 1 and r.qdq_nodes["DequantizeLinear"] >= 14
    assert r.ort_ops.get("QLinearConv", 0) == 6 and r.float_compute_ops == 0
    assert r.bytes == r.path.stat().st_size and r.size_ratio <= 0.35
    assert r.checked_samples == len(digits.test.inputs)
    assert r.top1_agreement >= 99.0
    logits = qmodel(digits.test.inputs).detach()
    assert r.max_abs_diff <= 0.05 * float(logits.abs().max())

    proto = onnx.load(str(r.path))
    inits = {t.name: t for t in proto.graph.initializer}
    per_channel = []
    for n in proto.graph.node:
        weight = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if weight is not None and weight.data_type == onnx.TensorProto.INT8:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            per_channel.append((axis, list(inits[n.input[1]].dims), list(weight.dims)[0]))
    assert len(per_channel) == 7
    assert all(axis == 0 and dims == [out] for axis, dims, out in per_channel)


def test_int8_activations_signed_variant_agrees(int8_export, qmodel, digits):
    import onnxruntime as ort

    from condense.quantize.onnx_int8 import simulation_agreement
    from condense.quantize.qdq_graph import insert_qdq

    _, r = int8_export
    proto = onnx.load(str(r.fp32_path))
    notes: list[str] = []
    insert_qdq(proto, quant_wrappers(qmodel), "int8", notes)
    zps = [t for t in proto.graph.initializer if "zero_point" in t.name and t.data_type == onnx.TensorProto.INT8]
    assert zps
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    agreement, _ = simulation_agreement(qmodel, sess, digits.test.inputs)
    assert agreement >= 99.0


def test_empty_calibration_is_a_config_error(trained_cnn):
    for empty in ([], torch.empty(0, 1, 8, 8), iter([])):
        with pytest.raises(ConfigError, match="empty calibration set"):
            quantize(trained_cnn, QuantizeConfig(), calibration=empty)
    with pytest.raises(ConfigError, match="calibration"):
        quantize(trained_cnn, QuantizeConfig(), calibration=None)


def test_wrong_calibration_shape_names_the_expected_shape(trained_cnn):
    with pytest.raises(ConfigError, match=r"\(batch, 1, 8, 8\)"):
        quantize(trained_cnn, QuantizeConfig(), calibration=torch.randn(8, 3, 8, 8))
    with pytest.raises(ConfigError, match="calibration batch 1"):
        quantize(trained_cnn, QuantizeConfig(), calibration=[torch.randn(8, 1, 8, 8), torch.randn(8, 5, 8, 8)])


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def test_unsupported_layer_is_skipped_and_reported():
    torch.manual_seed(0)
    model = _Recurrent().eval()
    x = torch.randn(16, 5, 4)
    with pytest.warns(UserWarning, match="lstm: LSTM has no quantized form"):
        q = quantize(model, QuantizeConfig(), calibration=x, targets=["LSTM", "Linear"])
    rep = q.condense_quant_report
    assert [d["name"] for d in rep.skipped] == ["lstm"] and "no quantized form" in rep.skipped[0]["reason"]
    assert [d["name"] for d in rep.layers] == ["head"]
    assert isinstance(q.lstm, nn.LSTM) and isinstance(q.head, QuantWrapper)
    with torch.no_grad():
        assert (q(x) - model(x)).abs().max() < 0.05


def test_selection_errors_and_dispatch(trained_cnn, digits):
    with pytest.raises(ConfigError, match="matches no module"):
        quantize(trained_cnn, QuantizeConfig(), calibration=digits.train, targets=["Conv3d"])
    with pytest.raises(ConfigError, match="quantization method"):
        quantize(trained_cnn, {"method": "statik"}, calibration=digits.train)
    with pytest.raises(ConfigError, match="no quantized layers"):
        export_int8_onnx(trained_cnn, digits.test.inputs[:1], "unused.onnx")
    q = quantize(trained_cnn, None, calibration=digits.train.inputs[:64], ignore=["classifier"])
    assert "classifier" not in quant_wrappers(q) and "features.2.1.conv" in quant_wrappers(q)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_static(q, QuantizeConfig(), digits.train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # folded BNs and weightless ReLUs are reported, not warned about
        q = quantize(trained_cnn, QuantizeConfig(), calibration=digits.train.inputs[:64], targets=["re:^features\\.0"])
    kinds = {d["name"]: d["kind"] for d in q.condense_quant_report.skipped}
    assert kinds["features.0.0.bn"] == "folded" and kinds["features.0.1.act"] == "no_weights"
    assert set(quant_wrappers(q)) == {"features.0.0.conv", "features.0.1.conv"}


def test_bias_correction_removes_the_expected_output_shift():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16)).eval()
    x = torch.randn(512, 32) + 2.0  # a non-zero input mean makes weight error shift the output
    cfg = QuantizeConfig(weight_bits=3, keep_first_last_8bit=False, calibration_samples=512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = quantize(model, cfg.replace(bias_correction=False), calibration=x)
        corrected = quantize(model, cfg, calibration=x)
    with torch.no_grad():
        ref = model(x).mean(0)
        shift_plain = (plain(x).mean(0) - ref).abs().mean().item()
        shift_corr = (corrected(x).mean(0) - ref).abs().mean().item()
    assert shift_corr < 0.2 * shift_plain


def test_resnet_residual_paths_quantize(digits):
    from condense.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet", in_channels=1, image_size=8, num_classes=10, depth=8, width=8).eval()
    q = quantize(model, QuantizeConfig(), calibration=digits.train.inputs[:128])
    layers = {d["name"]: d for d in q.condense_quant_report.layers}
    assert layers["features.0.0.conv1"]["act"] == "relu"
    assert layers["features.0.0.conv2"]["act"] is None  # its ReLU comes after the residual add
    with torch.no_grad():
        ref, out = model(digits.test.inputs), q(digits.test.inputs)
    assert np.corrcoef(ref.flatten().numpy(), out.flatten().numpy())[0, 1] > 0.99
