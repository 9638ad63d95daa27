import math

import pytest
import torch

from condense.core.errors import ConfigError, NonFiniteLossError
from condense.data.base import ArrayDataset
from condense.train import Callback, SupervisedTask, TaskBase, TrainConfig, fit
from condense.train.optim import lr_factor


def _cfg(**kw):
    base = dict(epochs=3, batch_size=64, lr=3e-3, progress="off", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_fit_learns_and_selects_best_on_validation(digits_splits, tiny_model):
    res = fit(SupervisedTask(tiny_model), digits_splits.train, _cfg(epochs=5), digits_splits.val)
    assert res.epochs_run == 5 and len(res.history) == 5
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    vals = [h["val_accuracy"] for h in res.history]
    assert res.best_metric == max(vals)
    # ties in accuracy are broken by the lower validation loss
    key = [(h["val_accuracy"], -h["val_loss"]) for h in res.history]
    assert res.best_epoch == key.index(max(key)) + 1
    assert res.best_metric > 0.85


class StopAt(Callback):
    """Simulates a crash: raises at the start of a given epoch (after that epoch's predecessor was checkpointed)."""

    def __init__(self, epoch: int | None):
        self.epoch = epoch

    def on_epoch_begin(self, state):
        if self.epoch is not None and state.epoch == self.epoch:
            raise KeyboardInterrupt


def _model():
    from condense.models.registry import build_model

    torch.manual_seed(123)
    return build_model("conftest:tiny_factory")


def test_resume_is_bit_identical(tmp_path, digits_splits):
    cfg_a = _cfg(epochs=4, checkpoint_dir=str(tmp_path / "a"))
    ref = fit(SupervisedTask(_model()), digits_splits.train, cfg_a, digits_splits.val, [StopAt(None)])

    cfg_b = _cfg(epochs=4, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        fit(SupervisedTask(_model()), digits_splits.train, cfg_b, digits_splits.val, [StopAt(2)])
    resumed = fit(SupervisedTask(_model()), digits_splits.train, cfg_b, digits_splits.val, [StopAt(None)], resume=True)
    assert resumed.resumed_from_epoch == 2
    for (k, a), (_, b) in zip(ref.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert [h["train_loss"] for h in ref.history] == [h["train_loss"] for h in resumed.history]
    assert (tmp_path / "b" / "metrics.jsonl").read_text().count("\n") == 4


def test_resume_with_changed_config_is_an_error(tmp_path, digits_splits):
    fit(SupervisedTask(_model()), digits_splits.train, _cfg(epochs=1, checkpoint_dir=str(tmp_path)), None)
    with pytest.raises(ConfigError, match=r"changed: epochs \(1 -> 2\), lr"):
        fit(SupervisedTask(_model()), digits_splits.train, _cfg(epochs=2, lr=0.1, checkpoint_dir=str(tmp_path)), None, resume=True)


def test_resume_of_a_checkpoint_written_before_a_config_field_existed(tmp_path, digits_splits):
    """A checkpoint lacks a TrainConfig field added later (`auto_epochs`): it ran with the field's
    default, so resuming with the default is no change (and bit-identical), another value is."""
    ref = fit(SupervisedTask(_model()), digits_splits.train, _cfg(epochs=2, checkpoint_dir=str(tmp_path / "a")), None)
    cfg = _cfg(epochs=2, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        fit(SupervisedTask(_model()), digits_splits.train, cfg, None, [StopAt(1)])
    path = tmp_path / "b" / "last.ckpt"
    ck = torch.load(path, weights_only=True)
    del ck["config"]["auto_epochs"]  # as written before the field existed
    torch.save(ck, path)
    with pytest.raises(ConfigError, match=r"changed: auto_epochs \(10 -> 3\)"):
        fit(SupervisedTask(_model()), digits_splits.train, cfg.replace(auto_epochs=3), None, [StopAt(None)], resume=True)
    resumed = fit(SupervisedTask(_model()), digits_splits.train, cfg, None, [StopAt(None)], resume=True)
    assert resumed.resumed_from_epoch == 1
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


class NaNTask(TaskBase):
    def __init__(self, model, bad_steps):
        super().__init__(model)
        self.bad_steps, self.calls = set(bad_steps), 0

    def step(self, batch):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(self.model(batch["input"]), batch["target"])
        return {"loss": loss * float("nan") if self.calls in self.bad_steps else loss}


def test_nonfinite_guard_skips_then_stops(tmp_path, digits_splits):
    task = NaNTask(_model(), bad_steps={2})
    res = fit(task, digits_splits.train, _cfg(epochs=1), None)
    assert res.skipped_nonfinite_steps == 1
    assert all(torch.isfinite(p).all() for p in task.model.parameters())

    task = NaNTask(_model(), bad_steps=range(3, 100))
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* for 3 steps in a row"):
        fit(task, digits_splits.train, _cfg(epochs=2, max_nonfinite_steps=3, checkpoint_dir=str(tmp_path)), None)
    assert not (tmp_path / "last.ckpt").exists()


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_begin(self, s): self.events.append("fit_begin")
    def on_epoch_begin(self, s): self.events.append("epoch_begin")
    def on_step_begin(self, s): self.events.append("step_begin")
    def on_after_backward(self, s):
        assert any(p.grad is not None for p in s.task.trainable_parameters())
        self.events.append("after_backward")
    def on_step_end(self, s): self.events.append("step_end")
    def on_epoch_end(self, s): self.events.append("epoch_end")
    def on_fit_end(self, s): self.events.append("fit_end")


def test_callbacks_and_max_steps(digits_splits):
    rec = Recorder()
    res = fit(SupervisedTask(_model()), digits_splits.train, _cfg(epochs=50, max_steps=7, batch_size=32), None, [rec])
    assert res.steps == 7
    assert rec.events.count("step_end") == 7 and rec.events.count("after_backward") == 7
    assert rec.events[0] == "fit_begin" and rec.events[-1] == "fit_end"
    assert rec.events.count("epoch_begin") == 1  # 7 steps fit inside the first epoch


def test_lr_schedule_warmup_cosine_step():
    cfg = TrainConfig(warmup_steps=10, schedule="cosine")
    assert lr_factor(0, 110, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 110, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, 110, 10, cfg) == pytest.approx(0.0)
    step = TrainConfig(schedule="step", step_size=2, gamma=0.5)
    assert [lr_factor(s, 100, 10, step) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]


def test_progress_takes_booleans(digits_splits, tiny_model, capsys):
    import yaml

    assert TrainConfig(progress=False).progress == "off" and TrainConfig(progress=True).progress == "auto"
    assert TrainConfig.from_dict(yaml.safe_load("progress: off")).progress == "off"  # YAML reads `off` as false
    assert TrainConfig.from_dict(TrainConfig(progress=False).to_dict()).progress == "off"
    assert [TrainConfig(progress=p).progress for p in ("auto", "bar", "log", "off")] == ["auto", "bar", "log", "off"]
    with pytest.raises(ConfigError, match="TrainConfig.progress: expected bool \\| 'auto'.*got 'of'"):
        TrainConfig(progress="of")
    fit(SupervisedTask(tiny_model), digits_splits.train, _cfg(max_steps=2, progress=False), None)
    assert capsys.readouterr().err == ""  # off: no bar, no epoch lines


def test_bad_inputs(digits_splits, tiny_model):
    with pytest.raises(ConfigError, match="needs labelled data"):
        fit(SupervisedTask(tiny_model), digits_splits.train.without_labels(), _cfg(epochs=1), None)
    empty = ArrayDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="empty"):
        fit(SupervisedTask(tiny_model), empty, _cfg(), None)
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="did you mean: sgd"):
        TrainConfig.from_dict({"optimizer": "sgdd"})


class SignalAt(Callback):
    """Simulates SIGTERM arriving during a given optimizer step."""

    def __init__(self, step: int | None):
        self.at = step

    def on_step_begin(self, state):
        from condense.train.signals import STOP

        if self.at is not None and state.step == self.at:
            STOP.signum = 15


def test_signal_stops_at_step_boundary_and_resumes_exactly(tmp_path, digits_splits):
    from condense.train.signals import STOP, Interrupted

    ref = fit(SupervisedTask(_model()), digits_splits.train, _cfg(epochs=3, checkpoint_dir=str(tmp_path / "a")),
              digits_splits.val, [SignalAt(None)])
    cfg = _cfg(epochs=3, checkpoint_dir=str(tmp_path / "b"))
    try:
        with pytest.raises(Interrupted, match="SIGTERM at epoch 2") as info:
            fit(SupervisedTask(_model()), digits_splits.train, cfg, digits_splits.val, [SignalAt(25)])
    finally:
        STOP.clear()
    assert info.value.exit_code == 143
    resumed = fit(SupervisedTask(_model()), digits_splits.train, cfg, digits_splits.val, [SignalAt(None)], resume=True)
    for (k, a), (_, b) in zip(ref.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert [h["train_loss"] for h in ref.history] == [h["train_loss"] for h in resumed.history]
