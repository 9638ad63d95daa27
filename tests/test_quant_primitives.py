"""Quantization primitives, observers, fake-quant wrappers and BatchNorm folding."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.quantize import (
    OBSERVERS,
    QuantizeConfig,
    QuantSpec,
    QuantWrapper,
    compute_qparams,
    dequantize,
    fake_quantize,
    fold_batchnorm,
    make_observer,
    quantize_tensor,
)
from condense.quantize.fold import trace_calls
from condense.quantize.observers import EntropyObserver, _kl_thresholds


# -- primitives ----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
    shift=st.floats(-3.0, 3.0),
    spread=st.floats(1e-3, 100.0),
)
def test_round_trip_error_within_half_a_step(bits, symmetric, signed, seed, shift, spread):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(257, generator=g) - 0.5) * spread + shift
    spec = QuantSpec(bits=bits, symmetric=symmetric, signed=signed)
    scale, zp = compute_qparams(x.min(), x.max(), spec)
    assert scale > 0 and spec.qmin <= int(zp) <= spec.qmax
    q = quantize_tensor(x, scale, zp, spec.qmin, spec.qmax)
    assert q.dtype == torch.int32 and int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    err = (dequantize(q, scale, zp) - x).abs().max()
    if symmetric and not signed:  # unsigned symmetric: zero point mid-grid, still within a step
        assert err <= scale * 0.5 + 1e-5 * spread
    else:
        assert err <= scale * 0.5 + 1e-5 * (spread + abs(shift))
    assert torch.allclose(fake_quantize(x, scale, zp, spec.qmin, spec.qmax), dequantize(q, scale, zp))


def test_symmetric_and_asymmetric_qparams():
    sym = QuantSpec.weight(8)
    s, z = compute_qparams(torch.tensor(-2.0), torch.tensor(1.0), sym)
    assert int(z) == 0 and s.item() == pytest.approx(2.0 / 127)
    assert (sym.qmin, sym.qmax) == (-127, 127)
    u8 = QuantSpec.activation(8)
    s, z = compute_qparams(torch.tensor(0.0), torch.tensor(10.0), u8)
    assert int(z) == 0 and s.item() == pytest.approx(10.0 / 255)
    s, z = compute_qparams(torch.tensor(-1.0), torch.tensor(3.0), u8)
    assert s.item() == pytest.approx(4.0 / 255) and int(z) == 64  # round(1 / (4/255)) = round(63.75)
    s, z = compute_qparams(torch.tensor(2.0), torch.tensor(3.0), u8)  # range widened to include 0
    assert int(z) == 0 and s.item() == pytest.approx(3.0 / 255)
    s, _ = compute_qparams(torch.tensor(0.0), torch.tensor(0.0), u8)  # constant tensor: eps scale
    assert s.item() > 0


def test_per_channel_scales_follow_output_channels():
    w = torch.zeros(3, 4, 2, 2)
    w[0, 0, 0, 0], w[1, 2, 1, 1], w[2, 3, 0, 1] = 1.0, -5.0, 0.25
    spec = QuantSpec.weight(8, per_channel=True)
    obs = make_observer("minmax", spec)
    obs.observe(w)
    lo, hi = obs.range()
    assert lo.shape == (3,) and torch.allclose(lo, torch.tensor([0.0, -5.0, 0.0]))
    scale, zp = obs.qparams()
    assert torch.allclose(scale, torch.tensor([1.0, 5.0, 0.25]) / 127) and (zp == 0).all()
    q = quantize_tensor(w, scale, zp, spec.qmin, spec.qmax, axis=0)
    assert q[0, 0, 0, 0] == 127 and q[1, 2, 1, 1] == -127 and q[2, 3, 0, 1] == 127


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_outside_2_to_8_are_config_errors(bits):
    with pytest.raises(ConfigError, match="bits"):
        QuantSpec(bits=bits)
    with pytest.raises(ConfigError, match="weight_bits"):
        QuantizeConfig(weight_bits=bits)
    with pytest.raises(ConfigError, match="activation_bits"):
        QuantizeConfig.from_dict({"activation_bits": bits})


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="did you mean"):
        QuantizeConfig(observer="percentil")
    with pytest.raises(ConfigError, match="unknown key"):
        QuantizeConfig.from_dict({"wieght_bits": 4})
    with pytest.raises(ConfigError, match="percentile"):
        QuantizeConfig(observer="percentile", observer_options={"percentile": 10.0})
    with pytest.raises(ConfigError, match="quantization method"):
        QuantizeConfig(method="nope")
    cfg = QuantizeConfig(weight_bits=4, observer="percentile", observer_options={"percentile": 99.9})
    assert QuantizeConfig.from_dict(cfg.to_dict()) == cfg


def test_ste_gradient_is_one_inside_and_zero_outside():
    scale, zp = torch.tensor(0.1), torch.tensor(0, dtype=torch.int32)
    x = torch.tensor([-20.0, -12.7, -1.0, 0.0, 0.33, 12.7, 12.8, 50.0], requires_grad=True)
    y = fake_quantize(x, scale, zp, -127, 127)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert y[0].item() == pytest.approx(-12.7) and y[-1].item() == pytest.approx(12.7)


# -- observers -----------------------------------------------------------------------------------
def test_every_observer_is_registered():
    assert set(OBSERVERS.names()) >= {"minmax", "moving_average", "percentile", "mse", "entropy"}


def test_minmax_is_exact_over_batches():
    obs = make_observer("minmax", QuantSpec.activation())
    obs.observe(torch.tensor([0.5, 2.0, -1.0]))
    obs.observe(torch.tensor([[3.0, 0.0]]))
    lo, hi = obs.range()
    assert (lo.item(), hi.item()) == (-1.0, 3.0)


def test_moving_average_formula():
    obs = make_observer("moving_average", QuantSpec.activation(), averaging_constant=0.25)
    obs.observe(torch.tensor([-1.0, 1.0]))
    obs.observe(torch.tensor([-5.0, 9.0]))
    lo, hi = obs.range()
    assert lo.item() == pytest.approx(-1.0 + 0.25 * (-5.0 + 1.0))
    assert hi.item() == pytest.approx(1.0 + 0.25 * (9.0 - 1.0))


def test_percentile_on_a_known_distribution():
    obs = make_observer("percentile", QuantSpec.activation(), percentile=99.0)
    x = torch.arange(10001, dtype=torch.float32)  # quantiles are the values themselves
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    for chunk in x[perm].split(1000):  # several batches: the histogram range grows
        obs.observe(chunk)
    lo, hi = obs.range()
    width = 10000 / 2048
    assert abs(hi.item() - 9900) <= 2 * width
    assert abs(lo.item() - 100) <= 2 * width


def test_mse_clips_heavy_tails_below_the_max():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g)
    x[:5] = torch.tensor([40.0, -35.0, 60.0, 55.0, -50.0])  # rare, huge outliers
    obs = make_observer("mse", QuantSpec.activation(bits=4, symmetric=True))
    obs.observe(x)
    lo, hi = obs.range()
    # brute force: the symmetric 4-bit clip that minimises the quantization MSE on this data
    spec = QuantSpec.activation(bits=4, symmetric=True)

    def mse(clip: float) -> float:
        scale, zp = compute_qparams(torch.tensor(-clip), torch.tensor(clip), spec)
        q = quantize_tensor(x, scale, zp, spec.qmin, spec.qmax)
        return float(((dequantize(q, scale, zp) - x) ** 2).mean())

    clips = torch.linspace(1.0, 60.0, 600)
    best = float(clips[int(torch.tensor([mse(float(c)) for c in clips]).argmin())])
    assert hi.item() < 60.0 and lo.item() == pytest.approx(-hi.item())  # clipped, symmetric
    assert mse(hi.item()) <= 1.05 * mse(best), (hi.item(), best)  # within 5 % of the optimal error
    # and on a uniform distribution there is nothing to clip
    obs = make_observer("mse", QuantSpec.activation(bits=8))
    obs.observe(torch.rand(20000, generator=g))
    assert obs.range()[1].item() > 0.95


def test_entropy_range_inside_min_max_and_clips_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50000, generator=g).abs()
    x[:3] = torch.tensor([30.0, 25.0, 28.0])
    obs = make_observer("entropy", QuantSpec.activation())
    obs.observe(x[:25000])
    obs.observe(x[25000:])
    lo, hi = obs.range()
    assert 0.0 <= lo.item() <= hi.item() <= 30.0
    assert hi.item() < 15.0  # the KL threshold drops the rare outliers
    signed = make_observer("entropy", QuantSpec.activation(symmetric=True))
    y = torch.randn(20000, generator=g)
    signed.observe(y)
    lo, hi = signed.range()
    assert y.min().item() <= lo.item() < 0 < hi.item() <= y.max().item()


def test_kl_of_a_histogram_that_fits_is_zero():
    hist = torch.zeros(2048, dtype=torch.float64)
    hist[:128] = 1.0  # uniform over exactly 128 bins: quantizing to 128 levels loses nothing
    kl = _kl_thresholds(hist, 128)
    assert kl[128].item() == pytest.approx(0.0, abs=1e-9)
    assert isinstance(make_observer("entropy", QuantSpec.activation()), EntropyObserver)


def test_observer_errors():
    obs = make_observer("minmax", QuantSpec.activation())
    with pytest.raises(RunError, match="no data"):
        obs.range()
    with pytest.raises(RunError, match="NaN"):
        obs.observe(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ConfigError, match="bad options"):
        make_observer("minmax", QuantSpec.activation(), percentile=3)


@pytest.mark.parametrize("name", ["minmax", "moving_average", "percentile", "mse", "entropy"])
def test_observers_work_per_channel(name):
    spec = QuantSpec.weight(8, per_channel=True)
    obs = make_observer(name, spec)
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.1, 1.0, 10.0, 0.5]).reshape(4, 1, 1, 1)
    obs.observe(w)
    lo, hi = obs.range()
    assert lo.shape == hi.shape == (4,)
    assert (hi <= w.flatten(1).amax(1) + 1e-6).all() and (lo >= w.flatten(1).amin(1) - 1e-6).all()
    scale, _ = obs.qparams()
    assert scale[2] > scale[1] > scale[3] > scale[0]


# -- fake-quant modules and folding --------------------------------------------------------------
def test_quant_wrapper_lifecycle_and_bias_scale():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    w = QuantWrapper(lin, QuantSpec.weight(8), QuantSpec.activation(8), act="relu", quantize_output=True)
    x = torch.randn(32, 6)
    ref = torch.relu(lin(x))
    assert torch.equal(w(x), ref)  # observe mode: float output
    w.freeze()
    assert w.mode == "quantize" and w.weight_fq.scale.shape == (3,) and w.input_fq.scale.shape == ()
    y = w(x)
    assert not torch.equal(y, ref) and (y - ref).abs().max() < 0.05
    assert torch.allclose(w.bias_scale(), w.input_fq.scale * w.weight_fq.scale)
    assert set(w.state_dict()) >= {"module.weight", "input_fq.scale", "weight_fq.zero_point", "output_fq.scale"}
    w.set_mode("off")
    assert torch.equal(w(x), ref)
    with pytest.raises(ConfigError):
        QuantWrapper(nn.LSTM(3, 3), QuantSpec.weight(8), QuantSpec.activation(8))


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(y)) + y


def test_bn_folding_preserves_outputs():
    torch.manual_seed(0)
    m = _ConvBN()
    for bn in (m.bn1, m.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    m.eval()
    x = torch.randn(4, 3, 6, 6)
    ref = m(x)
    pairs = fold_batchnorm(m, x)
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2")]
    assert isinstance(m.bn1, nn.Identity) and m.conv2.bias is not None
    assert torch.allclose(m(x), ref, atol=1e-5)
    assert m.condense_edits[-1] == {"kind": "fold_bn", "params": {"pairs": [["conv1", "bn1"], ["conv2", "bn2"]]}}
    with pytest.raises(ConfigError, match="eval"):
        fold_batchnorm(_ConvBN().train(), x)


def test_trace_sees_relu_after_add_as_not_fusable():
    from condense.models import build_model
    from condense.quantize.fold import consumers

    m = build_model("resnet", in_channels=1, image_size=8, num_classes=10, depth=8, width=8).eval()
    calls, out = trace_calls(m, torch.randn(2, 1, 8, 8))
    by = {c.name: c for c in calls}
    # conv1 -> bn1 -> relu1: the BN reads conv1's output; relu2 reads (bn2 + shortcut), not bn2
    assert [c.name for c in consumers(calls, by["features.0.0.conv1"])] == ["features.0.0.bn1"]
    assert [c.name for c in consumers(calls, by["features.0.0.bn1"])] == ["features.0.0.relu1"]
    assert consumers(calls, by["features.0.0.bn2"]) == []
    assert by["classifier"].out is out
