"""Issue 27, item 5: the fp32 file `export_int8_onnx(fp32_path=...)` writes is what it says.

Without `reference` it is the quantized model's BatchNorm-folded, bias-corrected float twin, and
the result and a note name it so; with `reference=` it is the original model, whose ONNX output
matches the original in PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from condense.data.digits import load_digits
from condense.export.onnx import onnx_session, ort_input
from condense.models import build_model
from condense.quantize import QuantizeConfig, export_int8_onnx, quantize


@pytest.fixture(scope="module")
def setup():
    digits = load_digits(seed=0)
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    qmodel = quantize(model, QuantizeConfig(calibration_samples=128), calibration=digits.train)
    return digits, model, qmodel


def test_the_twin_is_named_for_what_it_is(setup, tmp_path):
    digits, _model, qmodel = setup
    res = export_int8_onnx(qmodel, digits.test.inputs[:1], tmp_path / "m.int8.onnx", heldout=digits.test.inputs[:64],
                           fp32_path=tmp_path / "m.fp32.onnx", threads=1)
    assert res.fp32_reference == "bn_folded_twin" and res.to_dict()["fp32_reference"] == "bn_folded_twin"
    assert any("m.fp32.onnx is the quantized model's float twin" in n for n in res.notes)


def test_reference_writes_the_original_model(setup, tmp_path):
    digits, model, qmodel = setup
    res = export_int8_onnx(qmodel, digits.test.inputs[:1], tmp_path / "m.int8.onnx", heldout=digits.test.inputs[:64],
                           fp32_path=tmp_path / "m.fp32.onnx", threads=1, reference=model, latency_batches=(1,))
    assert res.fp32_reference == "original" and res.latency["fp32_reference"] == "original"
    assert not any("float twin" in n for n in res.notes)
    assert res.fp32_bytes == (tmp_path / "m.fp32.onnx").stat().st_size
    x = digits.test.inputs[:64]
    sess = onnx_session(tmp_path / "m.fp32.onnx", threads=1)
    got = sess.run(None, ort_input(sess, x))[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4  # the original, not the folded twin
