"""Weight-only low-bit quantization: packing, QuantizedLinear, bytes on disk, GPTQ, replay, mixed precision."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from condense.core.errors import ConfigError
from condense.models.edits import replay_edits
from condense.quantize.gptq import HessianCollector, gptq_quantize
from condense.quantize.mixed import MixedPrecisionConfig, apply_plan, mixed_precision, solve_bits
from condense.quantize.packing import (
    int_range,
    pack,
    pack_int2,
    pack_int4,
    pack_rows,
    packed_numel,
    unpack,
    unpack_int2,
    unpack_int4,
    unpack_rows,
)
from condense.quantize.weight_only import (
    QuantizedLinear,
    WeightOnlyConfig,
    quantize_weight_only,
    rtn_quantize,
)


def mlp(width: int = 256) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(128, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


# -- packing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 257])
def test_pack_roundtrip(bits: int, signed: bool, n: int) -> None:
    lo, hi = int_range(bits, signed)
    g = torch.Generator().manual_seed(bits * 100 + n)
    x = torch.randint(lo, hi + 1, (n,), generator=g)
    p = pack(x, bits, signed)
    assert p.dtype == torch.uint8 and p.numel() == packed_numel(n, bits)
    assert torch.equal(unpack(p, bits, n, signed).long(), x)
    rows = torch.randint(lo, hi + 1, (5, n), generator=g)
    pr = pack_rows(rows, bits, signed)
    assert pr.shape == (5, packed_numel(n, bits))
    assert torch.equal(unpack_rows(pr, bits, n, signed).long(), rows)


def test_int4_int2_layout_and_density() -> None:
    # first value in the low bits; two's complement for signed values
    assert pack_int4(torch.tensor([1, -1])).tolist() == [0xF1]
    assert pack_int2(torch.tensor([1, -2, -1, 0])).tolist() == [0b00_11_10_01]
    x = torch.randint(-8, 8, (1001,))
    assert pack_int4(x).numel() == 501 and torch.equal(unpack_int4(pack_int4(x), 1001).long(), x)
    y = torch.randint(-2, 2, (1001,))
    assert pack_int2(y).numel() == 251 and torch.equal(unpack_int2(pack_int2(y), 1001).long(), y)


def test_pack_rejects_out_of_range_and_bad_bits() -> None:
    with pytest.raises(ConfigError, match="do not fit"):
        pack(torch.tensor([8]), 4, signed=True)
    with pytest.raises(ConfigError, match="do not fit"):
        pack(torch.tensor([-1]), 4, signed=False)
    for bits in (1, 9):
        with pytest.raises(ConfigError):
            pack(torch.tensor([0]), bits)
    with pytest.raises(ConfigError, match="integer tensor"):
        pack(torch.tensor([0.5]), 4)


# -- QuantizedLinear --------------------------------------------------------------------------
@pytest.mark.parametrize(("bits", "bound"), [(8, 0.01), (4, 0.12)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantized_linear_close_to_fp32(bits: int, bound: float, symmetric: bool) -> None:
    torch.manual_seed(1)
    lin = nn.Linear(200, 48)  # 200 = 3 full groups of 64 + a ragged group of 8
    x = torch.randn(64, 200)
    q = QuantizedLinear.from_linear(lin, bits, 64, symmetric)
    ref = lin(x)
    rel = ((q(x) - ref).norm() / ref.norm()).item()
    assert rel < bound, rel
    assert q.qweight.dtype == torch.uint8
    assert q.qweight.shape == (48, packed_numel(200, bits))
    assert q.scales.shape == (48, 4) and q.scales.dtype == torch.float16
    assert (q.qzeros is None) == symmetric
    assert set(q.state_dict()) == {"qweight", "scales", "bias"} | (set() if symmetric else {"qzeros"})


def test_quantized_linear_dequantizes_exactly_what_rtn_chose() -> None:
    torch.manual_seed(2)
    lin = nn.Linear(64, 16, bias=False)
    qw = rtn_quantize(lin.weight, 4, 32, clip_search=False)
    q = QuantizedLinear.from_quantized(lin, qw)
    assert torch.equal(q.int_weight().to(torch.int16), qw.q)
    assert torch.allclose(q.dequantized_weight(), qw.dequantize())
    assert int(qw.q.min()) >= -8 and int(qw.q.max()) <= 7
    # without clipping, each group's largest |w| is on the grid (scale = amax / 7)
    g = lin.weight.detach().reshape(16, 2, 32).abs().amax(-1)
    assert torch.allclose(qw.scales.float() * 7, g, rtol=2e-3)


def test_safetensors_bytes_drop_at_4_bits(tmp_path) -> None:
    model = mlp(384)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert n_linear >= 100_000
    q = quantize_weight_only(model, WeightOnlyConfig(bits=4, group_size=128))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "fp32.safetensors")
    save_file({k: v.contiguous() for k, v in q.state_dict().items()}, tmp_path / "q4.safetensors")
    fp32 = (tmp_path / "fp32.safetensors").stat().st_size
    q4 = (tmp_path / "q4.safetensors").stat().st_size
    assert q4 <= 0.2 * fp32, (q4, fp32)
    assert isinstance(model[0], nn.Linear)  # the caller's model is untouched
    x = torch.randn(32, 128)
    assert ((q(x) - model(x)).norm() / model(x).norm()) < 0.15


def test_replay_fresh_model_loads_strictly(tmp_path) -> None:
    model = mlp(64)
    cfg = WeightOnlyConfig(bits=3, group_size=32, symmetric=False, layer_bits={"2": 8}, ignore=["4"])
    q = quantize_weight_only(model, cfg)
    assert isinstance(q[0], QuantizedLinear) and q[0].bits == 3 and q[2].bits == 8
    assert type(q[4]) is nn.Linear
    save_file({k: v.contiguous() for k, v in q.state_dict().items()}, tmp_path / "w.safetensors")
    from safetensors.torch import load_file

    fresh = mlp(64)
    replay_edits(fresh, q.condense_edits)
    fresh.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=True)
    x = torch.randn(8, 128)
    assert torch.equal(fresh(x), q(x))


def test_config_errors() -> None:
    for bits in (1, 9):
        with pytest.raises(ConfigError, match="bits"):
            WeightOnlyConfig(bits=bits)
    with pytest.raises(ConfigError, match="layer_bits"):
        WeightOnlyConfig(layer_bits={"fc": 1})
    with pytest.raises(ConfigError, match="algorithm"):
        WeightOnlyConfig.from_dict({"algorithm": "awq"})
    with pytest.raises(ConfigError, match="not a selected"):
        quantize_weight_only(mlp(32), WeightOnlyConfig(layer_bits={"9": 4}))
    with pytest.raises(ConfigError, match="calibration"):
        quantize_weight_only(mlp(32), WeightOnlyConfig(algorithm="gptq"))
    with pytest.raises(ConfigError, match="empty"):
        quantize_weight_only(mlp(32), WeightOnlyConfig(algorithm="gptq"), calibration=[])
    with pytest.raises(ConfigError, match="does not fit"):
        quantize_weight_only(mlp(32), WeightOnlyConfig(algorithm="gptq"), calibration=torch.randn(4, 7))


def test_non_linear_targets_are_skipped_and_reported() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    with pytest.warns(UserWarning, match="Conv2d has no weight-only"):
        q = quantize_weight_only(model, WeightOnlyConfig(targets=["Conv2d", "Linear"], group_size=0))
    assert type(q[0]) is nn.Conv2d and isinstance(q[2], QuantizedLinear)


def test_quantize_verb_dispatches_weight_only() -> None:
    from condense.quantize import quantize

    q = quantize(mlp(32), {"method": "weight_only", "bits": 4, "group_size": 32})
    assert isinstance(q[0], QuantizedLinear)


# -- GPTQ -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_rtn_on_correlated_inputs(bits: int) -> None:
    torch.manual_seed(0)
    din, dout = 128, 64
    mix = torch.randn(din, din) / din**0.5
    x = torch.randn(1024, din) @ mix + 0.05 * torch.randn(1024, din)  # strongly correlated features
    lin = nn.Linear(din, dout)
    col = HessianCollector(lin)
    with torch.no_grad():
        ref = lin(x)
    col.remove()
    rtn = QuantizedLinear.from_linear(lin, bits, 32)
    gq = QuantizedLinear.from_quantized(lin, gptq_quantize(lin.weight, col.H, bits, 32))
    with torch.no_grad():
        mse_rtn = (rtn(x) - ref).pow(2).mean().item()
        mse_gptq = (gq(x) - ref).pow(2).mean().item()
    assert mse_gptq < 0.8 * mse_rtn, (mse_gptq, mse_rtn)


def test_gptq_model_path_and_replay() -> None:
    model = mlp(64)
    calib = [torch.randn(32, 128) for _ in range(4)]
    q = quantize_weight_only(model, WeightOnlyConfig(bits=4, group_size=32, algorithm="gptq"), calib)
    assert all(isinstance(q[i], QuantizedLinear) for i in (0, 2, 4))
    fresh = mlp(64)
    replay_edits(fresh, q.condense_edits)
    fresh.load_state_dict(q.state_dict(), strict=True)
    x = torch.randn(8, 128)
    assert torch.equal(fresh(x), q(x))
    assert ((q(x) - model(x)).norm() / model(x).norm()) < 0.15


# -- mixed precision --------------------------------------------------------------------------
def _weighted_error_eval(reference: nn.Module, weights: dict[str, float]):
    """Metric = -sum_l w_l * ||W_l(q) - W_l||^2: layer sensitivities differ by the factors w_l."""
    ref = {n: m.weight.detach().clone() for n, m in reference.named_modules() if isinstance(m, nn.Linear)}

    def fn(model: nn.Module) -> float:
        total = 0.0
        for n, m in model.named_modules():
            if n in weights:
                w = m.dequantized_weight() if isinstance(m, QuantizedLinear) else m.weight
                total += weights[n] * float((w - ref[n]).pow(2).sum())
        return -total

    return fn


def test_mixed_precision_respects_budget_and_orders_by_sensitivity() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
    fn = _weighted_error_eval(model, {"0": 1000.0, "2": 1.0, "4": 30.0})
    for solver in ("knapsack", "greedy"):
        plan = mixed_precision(model, fn, candidate_bits=[8, 4, 2], size_ratio=0.15, group_size=64, solver=solver)
        assert plan.estimated_bytes <= plan.budget_bytes
        assert plan.bits["0"] >= plan.bits["4"] >= plan.bits["2"], plan.bits
        assert plan.bits["0"] > plan.bits["2"]
        # sensitivity measured per layer and bit width; lower bits hurt more
        for n in plan.sensitivity:
            assert plan.sensitivity[n][2] > plan.sensitivity[n][4] > plan.sensitivity[n][8] >= 0
    q = apply_plan(model, plan)
    state_bytes = sum(t.numel() * t.element_size() for t in q.state_dict().values())
    assert state_bytes == plan.estimated_bytes
    assert {n: q.get_submodule(n).bits for n in plan.bits} == plan.bits


def test_mixed_precision_bad_budget() -> None:
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ConfigError, match="exactly one"):
        MixedPrecisionConfig()
    with pytest.raises(ConfigError, match="2..8"):
        MixedPrecisionConfig(size_ratio=0.5, candidate_bits=[1])
    with pytest.raises(ConfigError, match="smallest plan"):
        mixed_precision(model, lambda m: 0.0, size_budget_bytes=100, candidate_bits=[4])


def test_solve_bits_exact_small_case() -> None:
    sens = {"a": {8: 0.0, 4: 5.0}, "b": {8: 0.0, 4: 1.0}, "c": {8: 0.0, 4: 2.0}}
    size = {n: {8: 100, 4: 50} for n in sens}
    assert solve_bits(sens, size, 250) == {"a": 8, "b": 4, "c": 8}
    assert solve_bits(sens, size, 200) == {"a": 8, "b": 4, "c": 4}
    assert solve_bits(sens, size, 200, solver="greedy") == {"a": 8, "b": 4, "c": 4}
