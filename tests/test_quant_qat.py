"""QAT: LSQ gradients, prepare / train / freeze schedules, BN folding at convert, replay, int8 export."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from condense.quantize.fake_quant import QuantWrapper
from condense.quantize.lsq import LSQFakeQuantize
from condense.quantize.qat import (
    FreezeBatchNormCallback,
    FreezeObserversCallback,
    QATConfig,
    QATWrapper,
    prepare_qat,
)
from condense.quantize.qat_convert import convert_qat
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.data.base import ArrayDataset
from condense.models.cnn import ConvBNAct
from condense.models.edits import replay_edits
from condense.train.callbacks import Callback, FitState
from condense.train.config import TrainConfig
from condense.train.fit import fit
from condense.train.supervised import SupervisedTask


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        ConvBNAct(1, 8), ConvBNAct(8, 16, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    )


# -- LSQ --------------------------------------------------------------------------------------
def test_lsq_gradients_match_the_paper_formula() -> None:
    fq = LSQFakeQuantize(3, "weight")  # signed narrow grid: Qn = Qp = 3
    assert (fq.qn, fq.qp) == (3, 3)
    fq.initialized.fill_(True)
    fq.scale.data.fill_(0.5)
    v = torch.tensor([-1.0, 0.26, 0.74, 3.0], requires_grad=True)  # v/s = -2, 0.52, 1.48, 6 (clipped)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = fq(v)
    assert torch.allclose(out, torch.tensor([-1.0, 0.5, 0.5, 1.5]))
    (out * upstream).sum().backward()
    # d v_hat / d s: -v/s + round(v/s) inside, Qp above: 0, +0.48, -0.48, 3; times g = 1/sqrt(N Qp)
    expected_s = (0 * 1 + 0.48 * 2 + (-0.48) * 3 + 3 * 4) / math.sqrt(4 * 3)
    assert fq.scale.grad.item() == pytest.approx(expected_s, rel=1e-5)
    # d v_hat / d v: straight through inside the range, 0 where clipped
    assert torch.allclose(v.grad, torch.tensor([1.0, 2.0, 3.0, 0.0]))


def test_lsq_below_range_and_per_channel() -> None:
    fq = LSQFakeQuantize(2, "weight", per_channel=True, num_channels=2)  # Qn = Qp = 1
    fq.initialized.fill_(True)
    fq.scale.data = torch.tensor([1.0, 0.25])
    w = torch.tensor([[-3.0, 0.4], [0.1, -0.2]], requires_grad=True)
    fq(w).sum().backward()
    g = 1 / math.sqrt(2 * 1)  # N = 2 weights per channel
    # channel 0: v/s = -3 (below: -Qn = -1), 0.4 (-0.4 + 0 = -0.4); channel 1: 0.4 -> -0.4, -0.8 -> 0.8 - 1 = -0.2
    assert torch.allclose(fq.scale.grad, torch.tensor([(-1 - 0.4) * g, (-0.4 - 0.2) * g]), atol=1e-6)


def test_lsq_init_and_activation_sign() -> None:
    x = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    fq = LSQFakeQuantize(8, "activation")
    fq(x)
    assert not bool(fq.signed) and (fq.qn, fq.qp) == (0, 255)
    assert fq.scale.item() == pytest.approx(2 * 2.0 / math.sqrt(255))
    fq2 = LSQFakeQuantize(8, "activation")
    fq2(x - 1)
    assert bool(fq2.signed) and (fq2.qn, fq2.qp) == (128, 127)


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_outside_2_to_8_are_config_errors(bits: int) -> None:
    with pytest.raises(ConfigError):
        QATConfig(bits=bits)
    with pytest.raises(ConfigError):
        QATConfig(act_bits=bits)
    with pytest.raises(ConfigError):
        LSQFakeQuantize(bits)


# -- prepare + train --------------------------------------------------------------------------
def test_prepare_qat_wraps_and_trains_on_digits(digits_splits) -> None:
    model = small_cnn()
    capped = prepare_qat(small_cnn(), QATConfig(bits=4, target="avx2"))
    assert [m.bits for m in capped.modules() if isinstance(m, QATWrapper)] == [7, 4, 7]  # no saturation on AVX2
    q = prepare_qat(model, QATConfig(bits=4, target="avx512-vnni"), calibration=digits_splits.train.inputs[:64])
    wrappers = {n: m for n, m in q.named_modules() if isinstance(m, QATWrapper)}
    assert list(wrappers) == ["0.conv", "1.conv", "4"]
    assert wrappers["0.conv"].bits == 8 and wrappers["1.conv"].bits == 4 and wrappers["4"].bits == 8
    assert all(type(m) is not QATWrapper for m in model.modules())  # caller untouched
    x, y = digits_splits.train.inputs, digits_splits.train.targets
    opt = torch.optim.Adam(q.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    q.train()
    for _ in range(30):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(q(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        for p in q.parameters():
            assert p.grad is None or bool(torch.isfinite(p.grad).all())
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    assert wrappers["1.conv"].weight_fq.scale.grad is not None


class _Record(Callback):
    def __init__(self, model: nn.Module) -> None:
        self.model, self.scales, self.bn_training = model, [], []

    def on_step_end(self, state: FitState) -> None:
        self.scales.append(self.model[1].conv.weight_fq.scale.detach().clone())
        self.bn_training.append(self.model[1].bn.training)


def test_freeze_callbacks_in_fit(digits_splits) -> None:
    q = prepare_qat(small_cnn(), QATConfig(bits=4), calibration=digits_splits.train.inputs[:64])
    data = ArrayDataset(digits_splits.train.inputs[:256], digits_splits.train.targets[:256],
                        digits_splits.train.indices[:256])
    rec = _Record(q)
    bn = q[1].bn
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, progress="off", select_best="last", max_steps=12)
    stats_before_freeze: list[torch.Tensor] = []

    class _BNStats(Callback):
        def on_step_begin(self, state: FitState) -> None:
            if state.step == 8:
                stats_before_freeze.append(bn.running_mean.clone())

    fit(SupervisedTask(q), data, cfg, callbacks=[
        FreezeObserversCallback(at_step=5), FreezeBatchNormCallback(at_epoch=1), _BNStats(), rec,
    ])
    # steps 1..5 learn the scale, from step 6 on (frozen at the start of step index 5) it stays
    assert not torch.equal(rec.scales[0], rec.scales[4])
    for s in rec.scales[5:]:
        assert torch.equal(s, rec.scales[4])
    assert not q[1].conv.weight_fq.scale.requires_grad and q[1].conv.input_fq.frozen
    # 8 steps per epoch: epoch 1 (steps 9..12) runs BN in eval mode, stats fixed
    assert rec.bn_training[:8] == [True] * 8 and rec.bn_training[8:] == [False] * 4
    assert torch.equal(bn.running_mean, stats_before_freeze[0])


def test_observer_mode_tracks_until_frozen() -> None:
    fq = LSQFakeQuantize(8, "activation", learn_scale=False)
    fq.train()
    fq(torch.rand(4, 10))
    s0 = fq.scale.item()
    fq(torch.rand(4, 10) * 10)
    assert fq.scale.item() > s0 and not fq.scale.requires_grad
    fq.freeze()
    s1 = fq.scale.item()
    fq(torch.rand(4, 10) * 100)
    assert fq.scale.item() == s1


# -- convert + replay + export ----------------------------------------------------------------
def _trained_qat(bits: int = 2) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    q = prepare_qat(small_cnn(), QATConfig(bits=bits, target="avx512-vnni"), calibration=x)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(15):
        loss = F.cross_entropy(q(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q.eval(), x


def test_convert_folds_bn_and_matches_qat_eval() -> None:
    q, x = _trained_qat()
    with torch.no_grad():
        ref = q(x)
        c = convert_qat(q, example=x[:2])
        out = c(x)
    assert isinstance(c[0].conv, QuantWrapper) and c[0].conv.mode == "quantize"
    assert isinstance(c[0].bn, nn.Identity) and isinstance(c[1].bn, nn.Identity)
    assert c[1].conv.weight_fq.spec.bits == 2 and c[1].conv.input_fq.spec.bits == 8
    # folding is exact up to the int32 bias rounding the integer model does
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95
    assert [e["kind"] for e in c.condense_edits] == ["qat", "fold_bn", "qat_convert"]
    # Sequential-adjacency folding (no example) finds the same pairs here
    with torch.no_grad():
        assert torch.equal(convert_qat(q)(x), out)


def test_replay_in_training_and_converted_models() -> None:
    q, x = _trained_qat(4)
    fresh = small_cnn()
    replay_edits(fresh, q.condense_edits)
    fresh.load_state_dict(q.state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
        c = convert_qat(q, example=x[:1])
        fresh2 = small_cnn()
        replay_edits(fresh2, c.condense_edits)
        fresh2.load_state_dict(c.state_dict(), strict=True)
        fresh2.eval()
        assert torch.equal(fresh2(x), c(x))


def test_convert_errors_and_weight_only_qat() -> None:
    with pytest.raises(ConfigError, match="no QAT layers"):
        convert_qat(small_cnn())
    fresh = prepare_qat(small_cnn(), QATConfig(bits=4))
    with pytest.raises(RunError, match="never ran"):
        convert_qat(fresh)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    q = prepare_qat(mlp, QATConfig(bits=4, quantize_activations=False, first_last_bits=None), calibration=x)
    c = convert_qat(q)
    from condense.quantize.weight_only import QuantizedLinear

    assert isinstance(c[0], QuantizedLinear) and c[0].bits == 4
    with torch.no_grad():
        assert torch.allclose(c(x), q.eval()(x), atol=1e-5)


def test_converted_qat_exports_to_int8_onnx(tmp_path) -> None:
    from condense.quantize.onnx_int8 import export_int8_onnx

    q, x = _trained_qat(4)
    c = convert_qat(q, example=x[:1])
    # quantized for a VNNI CPU (8-bit edges); built for avx2, whose kernels are exact with these weights
    res = export_int8_onnx(c, x[:1], tmp_path / "qat_int8.onnx", heldout=x, target="avx2")
    assert res.path.is_file() and res.weight_dtype == "uint8" and res.top1_agreement >= 99.0  # percent


def test_qat_fit_schedule_defaults_and_limits() -> None:
    from condense.quantize.qat_fit import qat_schedule

    assert qat_schedule(QATConfig(), 4) == {"freeze_bn_epoch": 2, "freeze_steps_epoch": 3}
    assert qat_schedule(QATConfig(), 1) == {"freeze_bn_epoch": 0, "freeze_steps_epoch": None}
    with pytest.raises(ConfigError, match="freeze_bn_epoch is 5 but training runs 3"):
        qat_schedule(QATConfig(freeze_bn_epoch=5), 3)
    with pytest.raises(ConfigError, match="alpha must be in"):
        QATConfig(alpha=1.5)


def test_recipe_quantize_stage_trains_qat_and_exports_int8(tmp_path) -> None:
    """`kind: quantize, method: qat` trains (the stage's `train:`), converts and deploys int8 ONNX;
    `train:` on a static quantize stage is refused with file:line."""
    import condense
    from condense.quantize import quant_wrappers
    from condense.recipes import load_recipe, validate_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("""version: 1
name: qat
data: {name: digits}
stages:
  - name: float
    kind: train
    model: {name: cnn}
    train: {epochs: 2, lr: 0.003}
  - name: qat4
    kind: quantize
    config: {method: qat, bits: 4}
    train: {epochs: 2, lr: 0.0005}
measure: {batch_sizes: [1], repeats: 3, warmup: 1}  # latency is not what this checks
""")
    report = condense.run_recipe(recipe, tmp_path / "run", quiet=True)
    rows = {s["stage"]: s for s in report["stages"]}
    folder = tmp_path / "run" / "02-qat4"
    assert (folder / "model.int8.onnx").is_file()
    model = condense.load(folder)
    wrappers = quant_wrappers(model)
    assert wrappers and {w.weight_fq.spec.bits for w in wrappers.values()} >= {4}
    assert rows["qat4"]["accuracy"] > rows["float"]["accuracy"] - 0.05  # 2 epochs of distilled QAT keep it
    assert rows["qat4"]["bytes_onnx"] < rows["float"]["bytes_onnx"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("method: qat, bits: 4", "method: static"))
    with pytest.raises(ConfigError, match=r"bad.yaml:12: stage kind 'quantize' with method 'static' does not train"):
        validate_recipe(load_recipe(bad))
