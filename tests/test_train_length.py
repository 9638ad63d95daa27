"""Issue 27, item 3: a run's length by optimizer steps, no dropped batch on small data, and a
warning when a run is shorter than its schedule needs."""
import warnings

import pytest
import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset
from condense.distill.config import DistillConfig
from condense.train import SupervisedTask, TrainConfig, fit
from condense.train.length import ShortRunWarning, length_warnings, resolve_drop_last, run_length


def _data(n: int, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return ArrayDataset(x, (x[:, 0] > 0).long(), torch.arange(n))


class _Count(SupervisedTask):
    """Counts the samples every step trains on."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(6, 2))
        self.seen = 0

    def step(self, batch):
        self.seen += len(batch["input"])
        return super().step(batch)


def test_default_length_has_a_step_floor_and_keeps_explicit_settings():
    small = run_length(TrainConfig(), 377)  # 377 = 5 x 64 + 57
    assert not small.drop_last and small.steps_per_epoch == 6
    assert small.total_steps >= 500 and small.total_steps == small.epochs * 6 and small.rule == "auto"
    large = run_length(TrainConfig(), 55_000)
    assert large.epochs == 10 and large.total_steps == 10 * large.steps_per_epoch
    # the user's epochs / max_steps are what run, however short
    assert run_length(TrainConfig(epochs=3), 377).total_steps == 18
    assert run_length(TrainConfig(max_steps=7), 377).total_steps == 7
    assert run_length(TrainConfig(min_steps=60), 377).total_steps == 60
    # distillation's defaults leave the length to the same rule
    assert DistillConfig().train.epochs is None and run_length(DistillConfig().train, 377).total_steps >= 500


def test_drop_last_auto_drops_only_a_small_share():
    assert not resolve_drop_last("auto", 377, 64)  # 57 images: 15 % of the set
    assert resolve_drop_last("auto", 387, 64)  # 3 images: 0.8 %
    assert not resolve_drop_last("auto", 384, 64)  # nothing to drop
    assert not resolve_drop_last("auto", 30, 64)  # one batch smaller than batch_size
    assert resolve_drop_last(True, 377, 64) and not resolve_drop_last(False, 387, 64)  # explicit wins


def test_small_set_trains_on_every_sample_each_epoch():
    task = _Count()
    res = fit(task, _data(70), TrainConfig(epochs=2, progress="off"))
    assert task.seen == 2 * 70 and res.steps == 4
    assert res.info["length"]["drop_last"] is False


def test_short_run_warns_with_its_numbers():
    cfg = TrainConfig(epochs=1, warmup_steps=20, progress="off")
    with pytest.warns(ShortRunWarning) as rec:
        res = fit(SupervisedTask(nn.Linear(6, 2)), _data(100), cfg)
    text = " ".join(str(w.message) for w in rec)
    assert "2 optimizer steps" in text and "warmup_steps 20" in text and "100 samples" in text
    assert res.info["length"]["warnings"]
    # an exact max_steps budget is deliberate: only the warm-up is warned about
    assert length_warnings(TrainConfig(max_steps=5), run_length(TrainConfig(max_steps=5), 100)) == []
    assert len(length_warnings(TrainConfig(max_steps=5, warmup_steps=10), run_length(TrainConfig(max_steps=5), 100))) == 1
    # a default-length run on the same data does not warn
    assert length_warnings(TrainConfig(warmup_steps=20), run_length(TrainConfig(warmup_steps=20), 100)) == []


def test_default_run_is_quiet_and_reaches_the_floor():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortRunWarning)
        res = fit(SupervisedTask(nn.Linear(6, 2)), _data(90), TrainConfig(progress="off", min_steps=120))
    assert res.steps == 120 and res.epochs_run == 60


def test_recovery_default_is_five_epochs_with_the_step_floor():
    """RecoverConfig() (after a prune / factorization / depth cut): 5 epochs, at least 500
    optimizer steps. A fixed 5 epochs were 100 steps on digits (benchmarks/recovery_length.py)."""
    from condense.cli import build_parser
    from condense.train.recover import RECOVER_TRAIN, RecoverConfig

    rcfg = RecoverConfig()
    assert run_length(rcfg.train, 1295).total_steps == 500  # digits: 25 epochs of 20 batches
    assert run_length(rcfg.train, 55_000).epochs == 5  # MNIST-sized: 5 epochs, as before
    assert run_length(TrainConfig(), 55_000).epochs == 10  # a plain run keeps 10
    partial = RecoverConfig.from_dict({"method": "distill", "train": {"lr": 0.01}})
    assert partial.train.auto_epochs == 5 and partial.train.select_best == "last" and partial.train.lr == 0.01
    assert RecoverConfig.from_dict(rcfg.to_dict()) == rcfg
    assert {k: getattr(rcfg.train, k) for k in RECOVER_TRAIN} == RECOVER_TRAIN
    for command in (["prune", "m", "--out", "o"], ["factorize", "m", "--out", "o"]):
        assert build_parser().parse_args(command).epochs is None  # the CLI leaves the length to the default
    with pytest.raises(ConfigError, match="auto_epochs must be >= 1"):
        TrainConfig(auto_epochs=0)
