"""Auto-tuning: trials are chosen on validation data, the Pareto set is consistent, never ends empty."""
import pytest
import torch

from condense.core.errors import ConfigError
from condense.models import build_model
from condense.train import TrainConfig, train_model
from condense.tune import TuneConfig, pareto_front, tune


def test_pareto_front_by_hand():
    pts = [(0.9, 10.0), (0.95, 20.0), (0.85, 12.0), (0.95, 15.0), (0.99, 30.0)]
    assert pareto_front(pts) == [0, 3, 4]


@pytest.fixture(scope="module")
def trained(digits_splits):
    torch.manual_seed(0)
    m = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=16, depth=1)
    return train_model(m, digits_splits.train, TrainConfig(epochs=4, lr=3e-3, progress="off"), digits_splits.val).model


def _cfg(**kw):
    base = dict(prune_ratios=[0.0, 0.5], recover=["finetune"], quantize=[False, True], max_trials=3,
                objective="bytes", train=TrainConfig(epochs=1, lr=1e-3, progress="off"))
    base.update(kw)
    return TuneConfig(**base)


def test_tune_chooses_within_tolerance_and_reports_pareto(digits_splits, trained):
    res = tune(trained, digits_splits, _cfg(tolerance=100.0))
    assert res.met_tolerance and len(res.trials) == 3
    chosen = res.trials[res.chosen]
    assert chosen["objective"] == min(t["objective"] for t in res.trials)  # everything is within 100 pt
    assert res.chosen in res.pareto and "test_accuracy" in chosen
    assert all(isinstance(p, int) for p in res.pareto)


def test_tune_keeps_best_when_nothing_meets_tolerance(digits_splits, trained, monkeypatch):
    import importlib

    tune_mod = importlib.import_module("condense.tune")  # `condense.tune` is the verb

    real = tune_mod.evaluate
    calls = []

    def evaluate(model, data, **kw):  # the baseline scores 1.0 on validation; every trial at most 0.9
        calls.append(1)
        m = dict(real(model, data, **kw))
        m["accuracy"] = 1.0 if len(calls) == 1 else min(m["accuracy"], 0.9)
        return m

    monkeypatch.setattr(tune_mod, "evaluate", evaluate)
    res = tune(trained, digits_splits, _cfg(tolerance=0.5, max_trials=2))
    assert not res.met_tolerance
    assert "no trial stayed within 0.5 pt" in res.message
    best = max(t["val_accuracy"] for t in res.trials)
    assert res.trials[res.chosen]["val_accuracy"] == best and res.model is not None


def test_tune_config_errors():
    with pytest.raises(ConfigError, match="tolerance must be >= 0"):
        TuneConfig(tolerance=-1)
    with pytest.raises(ConfigError, match="prune_ratios"):
        TuneConfig(prune_ratios=[1.0])
    with pytest.raises(ConfigError, match="recover entries"):
        TuneConfig(recover=["retrain"])
