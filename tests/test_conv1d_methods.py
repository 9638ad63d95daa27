"""GPT-2's `transformers.pytorch_utils.Conv1D` (weight (in, out), not an nn.Linear) is a Linear to
every method: magnitude / N:M masks, low-rank factorization, dynamic / static / QAT int8, the
transformer int8 ONNX path and ONNX export. A tiny random GPT-2 (structure only)."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from condense.core.linear import (
    as_linear,
    is_conv1d,
    is_linear,
    linear_dims,
    linear_weight,
    swap_conv1d,
)
from condense.models.edits import replay_edits

transformers = pytest.importorskip("transformers")

CONV1D = [f"lm.transformer.h.{i}.{p}" for i in range(2) for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
IDS = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))


class GPT2(nn.Module):
    """forward(input_ids) -> next-token logits of a tiny GPT2LMHeadModel."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
        self.lm = transformers.GPT2LMHeadModel(cfg)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def gpt2() -> GPT2:
    return GPT2().eval()


def _conv1d(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if is_conv1d(m)}


def test_helpers_see_conv1d_as_a_linear_and_the_swap_is_bit_identical():
    model = gpt2()
    assert sorted(_conv1d(model)) == sorted(CONV1D)
    c = model.lm.transformer.h[0].attn.c_attn
    assert not isinstance(c, nn.Linear) and is_linear(c) and linear_dims(c) == (96, 32)
    assert linear_weight(c).shape == (96, 32) and torch.equal(linear_weight(c), c.weight.t())
    lin = as_linear(c)
    x = torch.randn(3, 5, 32)
    assert type(lin) is nn.Linear and torch.equal(lin(x), c(x))  # bit-identical, not merely close
    ref = model(IDS)
    swapped = copy.deepcopy(model)
    assert sorted(swap_conv1d(swapped)) == sorted(CONV1D)
    assert not _conv1d(swapped) and torch.equal(swapped(IDS), ref)


# -- masks ---------------------------------------------------------------------------------------
def test_magnitude_pruning_masks_the_conv1d_layers():
    from condense.prune import MagnitudeConfig, make_permanent, prune, sparsity_report

    model = prune(gpt2(), MagnitudeConfig(ratio=0.5))
    rep = sparsity_report(model)["layers"]
    for name in CONV1D:
        assert rep[name]["masked"] and rep[name]["sparsity"] == pytest.approx(0.5, abs=1e-3), name
        w = model.get_submodule(name).weight
        kept = w[w != 0].abs().min()
        assert float(kept) >= float(model.get_submodule(name).parametrizations["weight"].original.abs()[w == 0].max())
    make_permanent(model)
    assert all(sparsity_report(model)["layers"][n]["sparsity"] == pytest.approx(0.5, abs=1e-3) for n in CONV1D)
    assert model(IDS).shape == (4, 8, 64)


def test_targets_can_name_the_conv1d_type():
    from condense.prune import MagnitudeConfig, prune, sparsity_report

    model = prune(gpt2(), MagnitudeConfig(ratio=0.5), targets=["Conv1D"])
    masked = {n for n, r in sparsity_report(model)["layers"].items() if r["masked"]}
    assert masked == set(CONV1D)


def test_nm_2_4_groups_run_along_the_input_features():
    from condense.prune import NMConfig, prune

    model = prune(gpt2(), NMConfig(n=2, m=4))
    for name in CONV1D:
        m = model.get_submodule(name)
        w = m.weight  # (in, out): the input features are dim 0
        groups = (w.t() != 0).reshape(w.shape[1], -1, 4)  # per output: 4 consecutive inputs
        assert bool((groups.sum(-1) == 2).all()), name
        # the kept two are the largest |w| of their group
        raw = m.parametrizations["weight"].original.t().reshape(w.shape[1], -1, 4).abs()
        kept_min = torch.where(groups, raw, torch.inf).amin(-1)
        dropped_max = torch.where(~groups, raw, -torch.inf).amax(-1)
        assert bool((kept_min >= dropped_max).all()), name


def test_nm_refuses_a_conv1d_whose_input_is_not_divisible():
    from transformers.pytorch_utils import Conv1D

    from condense.prune import NMConfig, prune

    net = nn.Sequential(Conv1D(8, 6), nn.ReLU(), Conv1D(4, 8))  # Conv1D(nf=out, nx=in): 6 inputs, then 8
    with pytest.warns(UserWarning, match=r"0 \(6 weights per row\)"):
        prune(net, NMConfig(n=2, m=4))
    assert (net[2].weight.t() != 0).reshape(4, -1, 4).sum(-1).eq(2).all()
    assert not hasattr(net[0], "parametrizations")


# -- factorization -------------------------------------------------------------------------------
def test_factorize_replaces_the_conv1d_layers_and_keeps_the_output():
    from condense.lowrank import LowRank, factorize

    model = gpt2()
    with torch.no_grad():  # make every Conv1D exactly rank 4: a rank-4 factorization is then exact
        g = torch.Generator().manual_seed(1)
        for name in CONV1D:
            w = model.get_submodule(name).weight
            w.copy_(0.2 * torch.randn(w.shape[0], 4, generator=g) @ torch.randn(4, w.shape[1], generator=g))
    ref = model(IDS)
    data = torch.randint(0, 64, (32, 8), generator=torch.Generator().manual_seed(2))
    f = factorize(copy.deepcopy(model), {"method": "activation_svd", "rank": 4, "targets": ["Conv1D"]}, data=data)
    assert f.condense_lowrank_report["factorized"] == len(CONV1D)
    for name in CONV1D:
        lr = f.get_submodule(name)
        assert isinstance(lr, LowRank) and lr.rank == [4]
        assert torch.allclose(lr.dense_weight(), model.get_submodule(name).weight.t(), atol=1e-5)
    assert torch.allclose(f(IDS), ref, atol=1e-4)
    fresh = replay_edits(gpt2(), f.condense_edits)  # the edit log rebuilds the shapes on a fresh GPT-2
    fresh.load_state_dict(f.state_dict())
    assert torch.equal(fresh(IDS), f(IDS))


# -- int8 ----------------------------------------------------------------------------------------
def test_dynamic_int8_quantizes_the_conv1d_layers():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from condense.quantize import quantize
    from condense.quantize.dynamic import DynamicConfig

    model = gpt2()
    ref = model(IDS)
    q = quantize(model, DynamicConfig())
    assert all(isinstance(q.get_submodule(n), DynamicLinear) for n in CONV1D)
    assert sorted(_conv1d(model)) == sorted(CONV1D)  # the caller's model is untouched
    assert (q(IDS) - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("method", ["static", "qat"])
def test_static_and_qat_wrap_the_conv1d_layers_and_replay(method):
    from condense.quantize import QuantizeConfig, quantize
    from condense.quantize.fake_quant import QuantWrapper
    from condense.quantize.qat import QATConfig, QATWrapper

    model = gpt2()
    ref = model(IDS)
    calib = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(3))
    if method == "static":
        q, kind = quantize(model, QuantizeConfig(), calibration=calib), QuantWrapper
    else:
        q, kind = quantize(model, QATConfig(), calibration=calib).eval(), QATWrapper
    for name in CONV1D:
        w = q.get_submodule(name)
        assert isinstance(w, kind) and type(w.module) is nn.Linear, name
        assert torch.equal(w.module.weight, model.get_submodule(name).weight.t())
        assert w.weight_fq.scale.numel() in (1, w.module.out_features)  # per output channel, not per input
    assert q.condense_edits[0]["kind"] == "conv1d_as_linear"
    out = q(IDS)
    assert (out - ref).abs().max() < 0.15 * ref.abs().max()
    fresh = replay_edits(gpt2(), q.condense_edits)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.eval()(IDS), out)


def test_transformer_int8_quantizes_gpt2_conv1d_layers(tmp_path):
    pytest.importorskip("onnxruntime")
    import condense
    from condense.export.onnx import onnx_session, ort_run
    from condense.quantize.transformer import TransformerInt8Config, export_transformer_int8

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    transformers.GPT2Model(cfg).save_pretrained(tmp_path / "gpt2")
    model = condense.build_model(f"hf:{tmp_path / 'gpt2'}", task="encoder").eval()
    ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    res = export_transformer_int8(model, tmp_path / "q.onnx", TransformerInt8Config(calibration_samples=16),
                                  calibration=batch, example=batch)
    names = sorted(n for n, m in model.named_modules() if is_conv1d(m))
    assert len(names) == 8 and res.int8_layers == names
    assert res.int8_ops.get("MatMulInteger", 0) >= 8
    assert res.smoothed and res.outlier_splits  # SmoothQuant and the outlier split found GPT-2's Linears
    out, ref = ort_run(onnx_session(res.path), batch), model(**batch).detach().numpy()
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    ignored = export_transformer_int8(model, tmp_path / "q2.onnx", TransformerInt8Config(
        fuse=False, smoothquant_alpha=None, outlier_channels=0, ignore=["re:mlp"]), example=batch)
    assert ignored.int8_layers == [n for n in names if ".attn." in n]


# -- export --------------------------------------------------------------------------------------
def test_onnx_export_parity_of_a_pruned_and_factorized_gpt2(tmp_path):
    pytest.importorskip("onnxruntime")
    from condense.export.onnx import export_onnx, onnx_session, ort_run
    from condense.lowrank import LowRank, factorize
    from condense.prune import NMConfig, make_permanent, prune

    model = make_permanent(prune(gpt2(), NMConfig(n=2, m=4), targets=["re:mlp"]))
    model = factorize(model, {"method": "svd", "rank": 8, "targets": ["re:attn"]}, example_inputs=IDS)
    assert all(isinstance(model.get_submodule(n), LowRank) for n in CONV1D if ".attn." in n)
    assert all(float((model.get_submodule(n).weight == 0).float().mean()) == 0.5 for n in CONV1D if ".mlp." in n)
    export_onnx(model, IDS, tmp_path / "g.onnx")
    out = ort_run(onnx_session(tmp_path / "g.onnx"), IDS)
    assert np.abs(out - model(IDS).detach().numpy()).max() < 1e-4


@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_weight_only_quantizes_the_conv1d_layers_and_replays(algorithm):
    from condense.quantize import quantize
    from condense.quantize.weight_only import QuantizedLinear, WeightOnlyConfig

    model = gpt2()
    ref = model(IDS)
    calib = [torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(4))]
    q = quantize(model, WeightOnlyConfig(algorithm=algorithm, bits=8), calibration=calib)
    assert all(isinstance(q.get_submodule(n), QuantizedLinear) for n in CONV1D)
    assert sorted(_conv1d(model)) == sorted(CONV1D)  # the caller's model is untouched
    out = q(IDS)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    fresh = replay_edits(gpt2(), q.condense_edits)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.eval()(IDS), out)
