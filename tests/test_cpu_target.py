"""int8 on the CPU that runs it: target detection, the saturating pair sum, and schemes that hold on every x86 CPU.

ONNX Runtime's u8 x s8 kernels on x86 without VNNI add adjacent products in saturating int16
(`vpmaddubsw`). These tests never depend on the machine's CPU: targets are explicit, and the numpy
reference `pair_sum_u8s8` proves which weight grids can saturate there.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from condense.core import cpu
from condense.core.errors import ConfigError


def test_pair_sum_reference_saturates_like_vpmaddubsw():
    a = np.full((1, 64), 255, np.uint8)
    w = np.full((64, 3), 127, np.int8)
    exact = cpu.pair_sum_u8s8(a, w, saturate=False)
    assert int(exact[0, 0]) == 255 * 127 * 64
    # every pair sum (64,770) is clipped to 32,767: 32 pairs -- what ORT returned on an AVX2 CPU
    assert int(cpu.pair_sum_u8s8(a, w)[0, 0]) == 32767 * 32
    # 7-bit weights (|w| <= 63) and an odd K (padded with a zero) never saturate
    w7 = np.full((63, 3), -63, np.int8)
    a7 = np.full((2, 63), 255, np.uint8)
    assert np.array_equal(cpu.pair_sum_u8s8(a7, w7), cpu.pair_sum_u8s8(a7, w7, saturate=False))


def test_bound_agrees_with_the_reference_on_random_weights():
    rng = np.random.default_rng(0)
    for bits in (8, 7):
        hi = 2 ** (bits - 1) - 1
        w = rng.integers(-hi, hi + 1, size=(32, 16)).astype(np.int8)
        a = np.full((1, 32), 255, np.uint8)
        same = np.array_equal(cpu.pair_sum_u8s8(a, np.abs(w).astype(np.int8)),
                              cpu.pair_sum_u8s8(a, np.abs(w).astype(np.int8), saturate=False))
        assert cpu.can_saturate(w) == (bits == 8)
        if bits == 7:
            assert same
        else:
            assert not same  # the worst case the bound names really saturates
    assert cpu.worst_pair_sum(np.array([[100], [-3], [90], [-120]], np.int8)) == (255 * 190, 255 * -123)


def test_targets_resolve_explicitly_and_by_environment(monkeypatch):
    assert cpu.resolve_target("avx2") == "avx2"
    assert not cpu.u8s8_exact("avx2") and cpu.u8s8_exact("avx512-vnni") and cpu.u8s8_exact("arm64")
    assert cpu.max_weight_bits("avx512") == 7 and cpu.max_weight_bits("avx-vnni") == 8
    with pytest.raises(ConfigError, match="did you mean 'avx2'"):
        cpu.resolve_target("avx-2")
    monkeypatch.setenv(cpu.ENV_VAR, "arm64")
    assert cpu.resolve_target("auto") == "arm64"
    monkeypatch.setenv(cpu.ENV_VAR, "pentium")
    with pytest.raises(ConfigError, match=cpu.ENV_VAR):
        cpu.resolve_target("auto")
    monkeypatch.delenv(cpu.ENV_VAR)
    assert cpu.resolve_target(None) == cpu.detect_target()
    rec = cpu.cpu_record()
    assert rec["int8_target"] in cpu.TARGETS and isinstance(rec["flags"], list)


def test_detection_reads_flags(monkeypatch):
    cpu.detect_target.cache_clear()
    try:
        monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
        for flags, want in [({"avx2", "avx512bw", "avx512_vnni"}, "avx512-vnni"), ({"avx2", "avx_vnni"}, "avx-vnni"),
                            ({"avx2", "avx512bw"}, "avx512"), ({"avx2"}, "avx2"), ({"sse4_1"}, "x86-64")]:
            monkeypatch.setattr(cpu, "cpu_flags", lambda f=flags: frozenset(f))
            cpu.detect_target.cache_clear()
            assert cpu.detect_target() == want
        monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
        cpu.detect_target.cache_clear()
        assert cpu.detect_target() == "arm64"
    finally:
        cpu.detect_target.cache_clear()


# -- static int8: the target decides the weight grid and the encoding --------------------------------
@pytest.fixture(scope="module")
def digits():
    from condense.data.digits import load_digits

    return load_digits(seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    from condense.models import build_model
    from condense.train.config import TrainConfig
    from condense.train.fit import train_model

    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=16)
    train_model(model, digits.train, TrainConfig(epochs=1, max_steps=30, batch_size=64, lr=3e-3, progress="off",
                                                 select_best="last"))
    return model.eval()


def _weights(path):
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        t = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if t is not None and t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) > 1:
            out.append(onnx.numpy_helper.to_array(t))
    return proto, out


def test_avx2_target_quantizes_to_weights_that_cannot_saturate(trained, digits, tmp_path):
    from condense.quantize import QuantizeConfig, export_int8_onnx, quant_wrappers, quantize
    from condense.quantize.qdq_graph import weight_columns

    q = quantize(trained, QuantizeConfig(calibration_samples=128, target="avx2"), calibration=digits.train)
    ws = quant_wrappers(q)
    assert all(w.weight_fq.spec.bits == 7 for w in ws.values())  # the 8-bit edges too
    assert not any(cpu.can_saturate(weight_columns(w)) for w in ws.values())
    r = export_int8_onnx(q, digits.test.inputs[:1], tmp_path / "m.onnx", heldout=digits.test.inputs, target="avx2",
                         threads=1)
    assert r.target == "avx2" and r.weight_dtype == "int8"  # fast U8S8 kernels, exact on AVX2
    proto, weights = _weights(r.path)
    assert weights and all(w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 63 for w in weights)
    assert {p.key: p.value for p in proto.metadata_props}["condense.int8_exact_on"] == "all"
    assert r.top1_agreement >= 99.0


def test_vnni_weights_exported_for_avx2_become_uint8_with_the_same_values(trained, digits, tmp_path):
    from condense.quantize import QuantizeConfig, export_int8_onnx, quantize

    q = quantize(trained, QuantizeConfig(calibration_samples=128, target="avx512-vnni"), calibration=digits.train)
    r8 = export_int8_onnx(q, digits.test.inputs[:1], tmp_path / "v.onnx", target="avx512-vnni")
    r = export_int8_onnx(q, digits.test.inputs[:1], tmp_path / "a.onnx", heldout=digits.test.inputs, target="avx2",
                         threads=1)
    assert r8.weight_dtype == "int8" and r.weight_dtype == "uint8"
    assert any("uint8 weights" in n for n in r.notes)
    _, w_vnni = _weights(r8.path)
    _, w_avx2 = _weights(r.path)
    assert any(np.abs(w.astype(int)).max() > 63 for w in w_vnni)  # full 8-bit grid
    for a, b in zip(w_vnni, w_avx2, strict=True):
        assert np.array_equal(a.astype(np.int16) + 128, b.astype(np.int16))
    # U8U8 kernels widen to 16 bits before adding: exact on every x86 CPU, so parity holds anywhere
    assert r.top1_agreement >= 99.0
    meta = {p.key: p.value for p in onnx.load(str(r8.path)).metadata_props}
    assert meta == {"condense.int8_target": "avx512-vnni", "condense.int8_exact_on": "u8s8-exact"}


def test_loading_a_vnni_file_on_a_saturating_cpu_warns(trained, digits, tmp_path, monkeypatch):
    from condense.export.onnx import onnx_session
    from condense.quantize import QuantizeConfig, export_int8_onnx, quantize

    q = quantize(trained, QuantizeConfig(calibration_samples=128, target="avx512-vnni"), calibration=digits.train)
    r = export_int8_onnx(q, digits.test.inputs[:1], tmp_path / "v.onnx", target="avx512-vnni")
    monkeypatch.setattr(cpu, "detect_target", lambda: "avx2")  # as if this CPU had no VNNI
    with pytest.warns(UserWarning, match="saturating int16"):
        onnx_session(r.path)
    monkeypatch.setattr(cpu, "detect_target", lambda: "arm64")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnx_session(r.path)


def test_dynamic_scheme_for_a_saturating_target():
    assert cpu.dynamic_int8_scheme("avx2", False, "qint8")[:2] == (True, "qint8")
    assert cpu.dynamic_int8_scheme("avx2", False, "quint8") == (False, "quint8", None)
    assert cpu.dynamic_int8_scheme("avx512-vnni", False, "qint8") == (False, "qint8", None)


# -- the real AVX2 kernels, under QEMU (CI installs qemu-user; condense.quantize.emulate) ----------------
class _Saturator(torch.nn.Module):
    """One Linear whose every weight is the channel maximum: with inputs at the top of their range,
    every u8 x s8 pair sum is 2 x 255 x 127 > 32,767 -- AVX2's int16 must clip it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 4)
        with torch.no_grad():
            self.fc.weight.fill_(0.5)
            self.fc.weight[1] = -0.5
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x)


needs_qemu = pytest.mark.skipif(not __import__("condense.quantize.emulate", fromlist=["x"]).can_emulate("avx2"),
                                reason="qemu-x86_64 not installed (apt-get install qemu-user; .ci/run installs it)")


@needs_qemu
def test_emulated_avx2_saturates_full_range_weights_and_not_the_avx2_build(tmp_path):
    from condense.quantize import QuantizeConfig, export_int8_onnx, quantize
    from condense.quantize.emulate import emulated_agreement

    model = _Saturator().eval()
    calib = torch.rand(64, 64)
    x = torch.cat([torch.ones(4, 64), torch.rand(4, 64)])  # the first rows hit 255 everywhere
    for target, bits in (("avx512-vnni", 8), ("avx2", 7)):
        q = quantize(model, QuantizeConfig(calibration_samples=64, bias_correction=False, target=target),
                     calibration=calib)
        r = export_int8_onnx(q, x[:1], tmp_path / f"{target}.onnx", target=target)
        with torch.no_grad():
            ref = q(x).numpy()
        emu = emulated_agreement(r.path, x, ref, target="avx2")
        if bits == 8:  # u8s8 with full-range weights: the AVX2 kernel clips, outputs are far off
            assert emu["max_abs_diff"] > 0.2 * float(np.abs(ref).max())
        else:  # 7-bit weights: the same kernel is exact
            assert emu["max_abs_diff"] < 1e-3 * float(np.abs(ref).max()) + 1e-6
    # the 8-bit model exported for avx2 is written with uint8 weights: exact under the same kernels
    q8 = quantize(model, QuantizeConfig(calibration_samples=64, bias_correction=False, target="avx512-vnni"),
                  calibration=calib)
    r = export_int8_onnx(q8, x[:1], tmp_path / "u8u8.onnx", target="avx2")
    assert r.weight_dtype == "uint8"
    with torch.no_grad():
        ref = q8(x).numpy()
    assert emulated_agreement(r.path, x, ref, target="avx2")["max_abs_diff"] < 1e-3 * float(np.abs(ref).max()) + 1e-6


@needs_qemu
def test_emulated_avx2_digits_agreement_of_the_default_build(trained, digits, tmp_path):
    """The issue's failing check, on AVX2 kernels: the auto build for avx2 agrees with its simulation."""
    from condense.quantize import QuantizeConfig, export_int8_onnx, quantize
    from condense.quantize.emulate import emulated_agreement

    q = quantize(trained, QuantizeConfig(calibration_samples=128, target="avx2"), calibration=digits.train)
    r = export_int8_onnx(q, digits.test.inputs[:1], tmp_path / "m.onnx", target="avx2")
    with torch.no_grad():
        ref = q(digits.test.inputs).numpy()
    emu = emulated_agreement(r.path, digits.test.inputs, ref, target="avx2")
    assert emu["top1_agreement"] >= 99.0
