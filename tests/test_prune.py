"""Pruning: configs, unstructured masks, N:M, make-permanent, schedules, callbacks, report."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from condense.core.errors import ConfigError
from condense.models import build_model, replay_edits
from condense.prune import (
    ChannelConfig,
    GradualPruningCallback,
    MagnitudeConfig,
    NMConfig,
    PruneConfig,
    SlimmingCallback,
    SlimmingConfig,
    cubic_sparsity,
    linear_sparsity,
    make_permanent,
    prune,
    pruning_report,
    sparsity_report,
)
from condense.prune.report import ZEROS_NOTE


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is fastest and immune to oversubscription on busy CI."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _cnn(**kw):
    torch.manual_seed(0)
    return build_model("cnn", in_channels=1, image_size=8, width=8, **kw)


# ---------------------------------------------------------------- configs


def _bn_inputs(model, x):
    """What each BatchNorm layer receives when `model` runs on `x` (eval mode)."""
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0])))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_prune_with_data_recalibrates_batchnorm(digits_splits):
    import warnings

    model = _cnn()
    x = digits_splits.train.inputs
    for m in model.modules():  # exact running statistics of the dense model on the data
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "stale statistics" warning when data is given
        prune(model, {"method": "channel", "ratio": 0.5}, data=digits_splits.train)
    # every BatchNorm now describes what the *pruned* network feeds it (8 batches of 64 drawn from
    # the training split: close to the whole split's statistics), not the dense network's
    for name, inp in _bn_inputs(model, x).items():
        bn = model.get_submodule(name)
        mean, var = inp.mean(dim=(0, 2, 3)), inp.var(dim=(0, 2, 3))
        scale = var.sqrt().mean()
        assert (bn.running_mean - mean).abs().max() < 0.15 * scale, name
        assert ((bn.running_var - var).abs() / var).max() < 0.3, name


def test_prune_without_data_warns_that_batchnorm_is_stale(digits_splits, tiny_model):
    import warnings

    with pytest.warns(UserWarning, match=r"BatchNorm running statistics are stale.*prune\(\.\.\., data="):
        prune(_cnn(), {"method": "channel", "ratio": 0.5})
    with pytest.warns(UserWarning, match="BatchNorm running statistics are stale"):
        prune(_cnn(), {"method": "magnitude", "ratio": 0.5})  # masks change the activations too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(_cnn(), {"method": "channel", "ratio": 0.5}, recalibrate=False)  # the caller recalibrates itself
        prune(tiny_model, {"method": "magnitude", "ratio": 0.5})  # no BatchNorm: nothing goes stale


def test_config_dispatch_and_round_trip():
    cfg = PruneConfig.from_dict({"method": "channel", "ratio": 0.25, "round_to": 8, "importance": "l2"})
    assert isinstance(cfg, ChannelConfig) and cfg.round_to == 8
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(PruneConfig.from_dict({"method": "slimming"}), SlimmingConfig)
    assert isinstance(PruneConfig.from_dict({}), MagnitudeConfig)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_bad_ratio_is_config_error(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        ChannelConfig(ratio=ratio)
    with pytest.raises(ConfigError, match="ratio"):
        PruneConfig.from_dict({"method": "magnitude", "ratio": ratio})
    with pytest.raises(ConfigError, match="ratio"):
        ChannelConfig(ratios={"features.0": ratio})


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'importance'"):
        PruneConfig.from_dict({"method": "magnitude", "importance": "l1"})
    with pytest.raises(ConfigError, match="did you mean"):
        PruneConfig.from_dict({"method": "chanel"})
    with pytest.raises(ConfigError):
        NMConfig(n=4, m=4)
    with pytest.raises(ConfigError):
        prune(_cnn(), MagnitudeConfig(), targets=["no_such_layer"])
    with pytest.raises(ConfigError):
        prune(_cnn(), MagnitudeConfig(), ignore=["re:^nothing$"])


# ---------------------------------------------------------------- unstructured


def _zeros(m: nn.Module) -> int:
    return int((m.weight == 0).sum())


def test_magnitude_global_exact_sparsity_and_ignore():
    model = _cnn()
    prune(model, MagnitudeConfig(ratio=0.7, scope="global"), ignore=["classifier"])
    layers = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    total = sum(m.weight.numel() for m in layers)
    assert sum(_zeros(m) for m in layers) == round(0.7 * total)
    assert _zeros(model.classifier) == 0 and not parametrize.is_parametrized(model.classifier)
    # global: the kept weights are the largest by magnitude across layers
    kept_min = min(m.weight[m.weight != 0].abs().min() for m in layers)
    pruned_max = max(m.parametrizations.weight.original[m.weight == 0].abs().max() for m in layers)
    assert kept_min >= pruned_max


def test_global_magnitude_warns_when_a_layer_is_wiped_out():
    model = _cnn()  # the classifier starts at N(0, 0.01), far below the convs' Kaiming scale
    with pytest.warns(UserWarning, match="removes every weight of classifier"):
        prune(model, MagnitudeConfig(ratio=0.9, scope="global"))


def test_magnitude_layer_exact_sparsity_on_targets():
    model = _cnn()
    prune(model, {"method": "magnitude", "ratio": 0.5, "scope": "layer"}, targets=["re:^features\\.1", "classifier"])
    rep = sparsity_report(model)
    for name, row in rep["layers"].items():
        if name.startswith("features.1") or name == "classifier":
            assert row["zeros"] == round(0.5 * row["numel"]) and row["masked"]
        else:
            assert row["zeros"] == 0 and not row["masked"]


def test_random_pruning_exact_and_seeded():
    a, b = _cnn(), _cnn()
    prune(a, {"method": "random", "ratio": 0.3, "seed": 1})
    prune(b, {"method": "random", "ratio": 0.3, "seed": 1})
    for (n, ma), mb in zip(a.named_modules(), b.modules(), strict=True):
        if isinstance(ma, (nn.Conv2d, nn.Linear)):
            assert _zeros(ma) == round(0.3 * ma.weight.numel())
            assert torch.equal(ma.weight == 0, mb.weight == 0), n


def test_masks_hold_during_training_and_make_permanent():
    model = _cnn()
    prune(model, MagnitudeConfig(ratio=0.6))
    zero_before = {n: (m.weight == 0).clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    make_permanent(model)
    for n, m in model.named_modules():
        if n in zero_before:
            assert not parametrize.is_parametrized(m)
            assert bool((m.weight[zero_before[n]] == 0).all())
    assert not any("parametrizations" in k for k in model.state_dict())


def test_masked_and_permanent_models_replay_from_edit_log():
    model = _cnn()
    prune(model, MagnitudeConfig(ratio=0.5))
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    for stage in ("masked", "permanent"):
        if stage == "permanent":
            make_permanent(model)
        fresh = replay_edits(model.condense_spec.build(), model.condense_edits)
        fresh.load_state_dict(model.state_dict(), strict=True)
        fresh.eval()
        assert torch.equal(fresh(x), model(x)), stage
    assert [e["kind"] for e in model.condense_edits] == ["prune_masks", "prune_unmask"]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_masks_are_exact(n, m):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 16))
    prune(model, NMConfig(n=n, m=m))
    for layer in (model[0], model[2]):
        rows = layer.weight.reshape(layer.weight.shape[0], -1)
        nz = (rows.reshape(rows.shape[0], -1, m) != 0).sum(-1)
        assert bool((nz == n).all())
        mask = layer.parametrizations.weight[0].mask.reshape(rows.shape[0], -1, m)
        assert bool((mask.sum(-1) == n).all())


def test_nm_skips_indivisible_rows_with_warning():
    model = _cnn()  # first conv: 1 input channel x 3 x 3 = 9 weights per row
    with pytest.warns(UserWarning, match="features.0.0.conv"):
        prune(model, NMConfig())
    assert not parametrize.is_parametrized(model.features[0][0].conv)
    assert parametrize.is_parametrized(model.classifier)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("fn", [cubic_sparsity, linear_sparsity])
def test_schedules_hit_end_points_and_are_monotone(fn):
    values = [fn(t, 10, 110, 0.1, 0.9) for t in range(0, 130)]
    assert values[0] == pytest.approx(0.1) and values[10] == pytest.approx(0.1)
    assert values[110] == pytest.approx(0.9) and values[-1] == pytest.approx(0.9)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
    # Zhu & Gupta: cubic prunes faster early than a linear ramp
    assert cubic_sparsity(35, 10, 110, 0.0, 0.8) > linear_sparsity(35, 10, 110, 0.0, 0.8)


def _simulate(model, cb, steps, start=0, x=None, y=None):
    """Drive a callback through the hooks fit() calls, with plain SGD steps."""
    state = SimpleNamespace(step=start, total_steps=steps, task=SimpleNamespace(eval_model=lambda: model))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cb.on_fit_begin(state)
    for _ in range(start, steps):
        cb.on_step_begin(state)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        cb.on_after_backward(state)
        opt.step()
        state.step += 1
        cb.on_step_end(state)
    return state


def test_gradual_pruning_reaches_final_sparsity_and_resumes_exactly():
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    kw = {"final_sparsity": 0.8, "start_step": 2, "end_step": 14, "frequency": 3, "scope": "global", "targets": ["Conv2d"]}
    model = _cnn()
    cb = GradualPruningCallback(model, **kw)
    seen = []
    orig = cb.update

    def spy(step, total=None):
        orig(step, total)
        seen.append(cb.current)

    cb.update = spy
    _simulate(model, cb, 20, x=x, y=y)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    total = sum(m.weight.numel() for m in layers)
    assert sum(_zeros(m) for m in layers) == round(0.8 * total) and _zeros(model.classifier) == 0
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False)) and seen[-1] == pytest.approx(0.8)

    # interrupted at step 8, resumed from model + callback state: identical result
    a = _cnn()
    cb_a = GradualPruningCallback(a, **kw)
    _simulate(a, cb_a, 8, x=x, y=y)
    b = _cnn()
    cb_b = GradualPruningCallback(b, **kw)
    b.load_state_dict(a.state_dict(), strict=True)
    cb_b.load_state_dict(cb_a.state_dict())
    _simulate(b, cb_b, 20, start=8, x=x, y=y)
    full = _cnn()
    _simulate(full, GradualPruningCallback(full, **kw), 20, x=x, y=y)
    for pb, pf in zip(b.state_dict().values(), full.state_dict().values(), strict=True):
        assert torch.allclose(pb, pf, atol=1e-6)


def test_gradual_pruning_attaches_in_fit_begin():
    model = _cnn()
    cb = GradualPruningCallback(final_sparsity=0.5, end_step=4, frequency=1, targets=["Linear"], scope="layer")
    _simulate(model, cb, 6, x=torch.randn(8, 1, 8, 8), y=torch.randint(0, 10, (8,)))
    assert _zeros(model.classifier) == round(0.5 * model.classifier.weight.numel())
    assert _zeros(model.features[0][0].conv) == 0


def test_gradual_pruning_bad_arguments():
    with pytest.raises(ConfigError):
        GradualPruningCallback(final_sparsity=1.0)
    with pytest.raises(ConfigError):
        GradualPruningCallback(final_sparsity=0.5, initial_sparsity=0.6)
    with pytest.raises(ConfigError):
        GradualPruningCallback(final_sparsity=0.5, frequency=0)


def test_slimming_callback_adds_l1_subgradient():
    model = _cnn()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        bns[0].weight[0] = -1.0
    before = [bn.weight.grad.clone() for bn in bns]
    cb = SlimmingCallback(penalty=0.01)
    cb.on_after_backward(SimpleNamespace(task=SimpleNamespace(eval_model=lambda: model)))
    for bn, g in zip(bns, before, strict=True):
        assert torch.allclose(bn.weight.grad - g, 0.01 * torch.sign(bn.weight))
    assert float(bns[0].weight.grad[0] - before[0][0]) == pytest.approx(-0.01)


# ---------------------------------------------------------------- report


def test_report_is_honest_about_masks():
    ref = _cnn()
    x = torch.randn(1, 1, 8, 8)
    masked = prune(copy.deepcopy(ref), MagnitudeConfig(ratio=0.9))
    rep = pruning_report(masked, x, reference=ref)
    assert ZEROS_NOTE in rep["notes"]
    assert rep["model"]["macs"] == rep["reference"]["macs"]
    assert rep["model"]["params"] == rep["reference"]["params"]
    assert rep["model"]["bytes_on_disk"] >= rep["reference"]["bytes_on_disk"]  # masks are saved too
    est = rep["compressed_size_estimate"]
    assert "estimate" in est["how"] and est["csr_estimate"] < rep["reference"]["bytes_on_disk"]
    make_permanent(masked)
    assert ZEROS_NOTE in pruning_report(masked, x)["notes"]

    small = prune(copy.deepcopy(ref), ChannelConfig(ratio=0.5), example_inputs=x)
    rep = pruning_report(small, x, reference=ref, measure_latency=True)
    assert ZEROS_NOTE not in rep["notes"] and "compressed_size_estimate" not in rep
    assert rep["ratio"]["macs"] < 0.5 and rep["ratio"]["params"] < 0.5 and rep["ratio"]["bytes_on_disk"] < 0.5
    assert rep["model"]["latency_ms"] > 0
