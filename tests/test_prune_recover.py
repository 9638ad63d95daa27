"""Recovery after pruning (fine-tune / distill), MAC targets, masks held in training, the CLI."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from condense.artifacts import load, save
from condense.core.errors import ConfigError, RunError
from condense.data import load_dataset
from condense.evaluate import evaluate
from condense.models import build_model
from condense.prune import ChannelConfig, MagnitudeConfig, count_macs, make_permanent, prune
from condense.prune.masks import get_mask, masked_layers, raw_weight
from condense.prune.recover import (
    RecoverConfig,
    check_masks_held,
    iterative_prune,
    macs_ratio_to_channel_ratio,
    mask_snapshot,
    prune_and_recover,
)
from condense.train import TrainConfig, train_model

CNN = {"in_channels": 1, "image_size": 8, "num_classes": 10}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def dense_cnn(splits):
    """A tiny trained CNN (widths 4/8/16): the model every test prunes a copy of."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("cnn", width=4, **CNN)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, warmup_steps=10, progress="off", seed=0)
    return train_model(model, splits.train, cfg, splits.val).model


def _recover(method: str, epochs: int = 2) -> RecoverConfig:
    return RecoverConfig(method=method, train=TrainConfig(epochs=epochs, batch_size=32, lr=5e-3, progress="off", select_best="last"))


@pytest.mark.parametrize("method", ["finetune", "distill"])
def test_recovery_beats_the_unrecovered_pruned_model(dense_cnn, splits, method):
    model, info = prune_and_recover(copy.deepcopy(dense_cnn), ChannelConfig(), _recover(method),
                                    splits.train, splits.val, target_macs=0.25)
    acc = info["val"]
    assert info["metric"] == "accuracy" and acc["before"] > 0.8
    assert acc["edited"] < acc["before"] - 0.1  # 75 % of the MACs gone hurts before recovery...
    assert acc["recovered"] > acc["edited"] + 0.1  # ...and recovery wins much of it back
    assert info["recovered"]["macs"] == count_macs(model, splits.test.inputs[:1]) <= 0.25 * info["before"]["macs"]
    assert info["fit"]["epochs_run"] == 2 and info["recover"]["method"] == method


def test_recover_none_and_unstructured_finetune(dense_cnn, splits):
    pruned, info = prune_and_recover(copy.deepcopy(dense_cnn), {"method": "magnitude", "ratio": 0.9}, {"method": "none"},
                                     None, splits.val, splits.test.inputs[:1])
    assert "fit" not in info and not masked_layers(pruned) and info["edited"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    model, info = prune_and_recover(copy.deepcopy(dense_cnn), MagnitudeConfig(ratio=0.9), _recover("finetune"), splits.train, splits.val)
    assert info["val"]["recovered"] > info["val"]["edited"]
    assert info["masked_weights_checked"] > 0 and not masked_layers(model)  # checked, then made permanent
    assert info["recovered"]["sparsity"] == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize(("name", "kwargs"), [("cnn", {}), ("resnet", {"depth": 8})])
def test_target_macs_hits_the_requested_fraction(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, **CNN, **kwargs)
    x = torch.zeros(1, 1, 8, 8)
    dense = count_macs(model, x)
    for round_to, target in ((1, 0.5), (1, 0.25), (4, 0.5), (4, 0.25)):
        ratio = macs_ratio_to_channel_ratio(model, target, ChannelConfig(round_to=round_to), x)
        pruned = prune(copy.deepcopy(model), ChannelConfig(ratio=ratio, round_to=round_to), x)
        frac = count_macs(pruned, x) / dense
        assert target - (0.02 if round_to == 1 else 0.06) <= frac <= target, (name, round_to, target, frac)
    assert count_macs(model, x) == dense  # the search never touches the model


def test_target_macs_global_scope_and_bad_input(dense_cnn, splits):
    x = splits.test.inputs[:1]
    ratio = macs_ratio_to_channel_ratio(dense_cnn, 0.5, ChannelConfig(scope="global"), x)
    pruned = prune(copy.deepcopy(dense_cnn), ChannelConfig(scope="global", ratio=ratio), x)
    assert 0.4 <= count_macs(pruned, x) / count_macs(dense_cnn, x) <= 0.5
    with pytest.raises(ConfigError, match="fraction of MACs kept"):
        macs_ratio_to_channel_ratio(dense_cnn, 1.5, ChannelConfig(), x)
    with pytest.raises(ConfigError, match="structured method"):
        prune_and_recover(copy.deepcopy(dense_cnn), MagnitudeConfig(), {"method": "none"}, None, example_inputs=x, target_macs=0.5)
    with pytest.raises(ConfigError, match="needs training data"):
        prune_and_recover(copy.deepcopy(dense_cnn), ChannelConfig(), {"method": "finetune"}, None, example_inputs=x)
    with pytest.raises(ConfigError, match="alpha"):
        RecoverConfig(alpha=2.0)
    with pytest.raises(ConfigError, match="unknown key"):
        RecoverConfig.from_dict({"methd": "distill"})


def test_masks_hold_during_finetuning(dense_cnn, splits):
    model = prune(copy.deepcopy(dense_cnn), MagnitudeConfig(ratio=0.7))
    layers = masked_layers(model)
    before = {n: raw_weight(m).detach().clone() for n, m in layers.items()}
    model, info = prune_and_recover(model, MagnitudeConfig(ratio=0.7), _recover("finetune", 2).replace(keep_masks=True),
                                    splits.train, splits.val)
    assert set(masked_layers(model)) == set(layers)
    for n, m in masked_layers(model).items():
        off = get_mask(m).mask == 0
        assert off.float().mean() == pytest.approx(0.7, abs=0.01)
        assert torch.count_nonzero(m.weight[off]) == 0  # the computed weight stays exactly zero
        assert not torch.equal(raw_weight(m)[~off], before[n][~off])  # while the kept weights trained
    expected = mask_snapshot(model)
    assert check_masks_held(model, expected) == info["masked_weights_checked"] > 0
    # the check fails when a mask changed or was lost
    name = next(iter(expected))
    changed = {**expected, name: torch.ones_like(expected[name])}
    with pytest.raises(RunError, match=f"the mask of '{name}' changed"):
        check_masks_held(model, changed)
    with pytest.raises(RunError, match="masks lost"):
        check_masks_held(model, {**expected, "no.such.layer": expected[name]})


def test_make_permanent_on_a_copy_leaves_the_original_working(dense_cnn):
    model = prune(copy.deepcopy(dense_cnn), MagnitudeConfig(ratio=0.5))
    x = torch.randn(2, 1, 8, 8)
    ref = model.eval()(x)
    clone = make_permanent(copy.deepcopy(model))
    assert torch.allclose(model(x), ref) and torch.allclose(clone.eval()(x), ref)  # torch would delete the class's `weight`
    make_permanent(model)
    assert torch.allclose(clone(x), ref)


def test_iterative_prune_ratio_and_macs_steps(dense_cnn, splits):
    model, info = iterative_prune(copy.deepcopy(dense_cnn), MagnitudeConfig(), _recover("finetune", 1), splits.train, splits.val,
                                  steps=[0.5, 0.8])
    assert [s["step"] for s in info["steps"]] == [0.5, 0.8] and not masked_layers(model)
    assert info["steps"][-1]["recovered"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    model, info = iterative_prune(copy.deepcopy(dense_cnn), ChannelConfig(), _recover("distill", 1), splits.train, splits.val,
                                  steps=[0.6, 0.3], by="macs")
    assert 0.2 <= info["macs_fraction"] <= 0.3 and len(model.condense_edits) == 2
    with pytest.raises(ConfigError, match="increase"):
        iterative_prune(dense_cnn, MagnitudeConfig(), None, splits.train, steps=[0.8, 0.5])


def test_pruned_artifact_round_trip_is_exact(dense_cnn, splits, tmp_path):
    x = splits.test.inputs[:16]
    for cfg, target in ((ChannelConfig(round_to=2), 0.5), (MagnitudeConfig(ratio=0.8), None)):
        model, _ = prune_and_recover(copy.deepcopy(dense_cnn), cfg, _recover("finetune", 1), splits.train, splits.val,
                                     target_macs=target)
        folder = save(model, tmp_path / cfg.method)
        back = load(folder)
        with torch.no_grad():
            assert torch.equal(back(x), model.eval()(x))
        assert [e["kind"] for e in back.condense_edits] == [e["kind"] for e in model.condense_edits]


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_main():
    """The real `condense` entry point (so an unwired `prune` / `sensitivity` command fails these tests)."""
    import condense.cli as c

    return c.main


@pytest.fixture(scope="module")
def artifact(dense_cnn, tmp_path_factory):
    return save(dense_cnn, tmp_path_factory.mktemp("prune-cli") / "teacher", extra={"data": {"name": "digits", "kwargs": {}}})


def test_cli_prune_channel_distill_end_to_end(cli_main, artifact, splits, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = cli_main(["prune", str(artifact), "--method", "channel", "--target-macs", "0.5", "--round-to", "2",
                     "--recover", "distill", "--epochs", "2", "--lr", "5e-3", "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["macs_fraction"] <= 0.5 and summary["params"] < summary["params_before"]
    assert summary["bytes_on_disk"] < summary["bytes_before"] and summary["test_accuracy"] > 0.5
    model = load(out)
    assert evaluate(model, splits.test)["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert all(c % 2 == 0 for m in model.modules() if isinstance(m, torch.nn.Conv2d) for c in [m.out_channels])
    meta = json.loads((out / "condense.json").read_text())
    assert meta["data"]["name"] == "digits" and meta["prune_config"]["method"] == "channel"


def test_cli_prune_magnitude_text_and_bad_options(cli_main, artifact, tmp_path, capsys):
    code = cli_main(["prune", str(artifact), "--method", "magnitude", "--ratio", "0.8", "--recover", "none",
                     "--out", str(tmp_path / "masked")])
    text = capsys.readouterr().out
    assert code == 0 and "sparsity 80.0%" in text and "zeros are not removed" in text
    code = cli_main(["prune", str(artifact), "--method", "magnitude", "--importance", "l1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--importance does not apply" in err and len(err.strip().splitlines()) == 1
    code = cli_main(["prune", str(artifact), "--method", "magnitude", "--target-macs", "0.5", "--out", str(tmp_path / "x")])
    assert code == 2 and "structured method" in capsys.readouterr().err
    code = cli_main(["prune", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert code == 3
    code = cli_main(["prune", str(artifact), "--ratio", "1.0", "--out", str(tmp_path / "x")])
    assert code == 2 and "[0, 1)" in capsys.readouterr().err


def test_cli_sensitivity_table_and_allocation(cli_main, artifact, tmp_path, capsys):
    code = cli_main(["sensitivity", str(artifact), "--ratios", "0.25", "0.5", "0.75", "--target", "0.3", "--json",
                     "--out", str(tmp_path / "sens.json")])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["split"] == "val" and len(res["table"]["entries"]) >= 5
    assert res["allocation"]["estimated_fraction_kept"] <= 0.7 and "layers" in json.loads((tmp_path / "sens.json").read_text())["table"]
    code = cli_main(["sensitivity", str(artifact), "--ratios", "0.5", "0.75", "--method", "magnitude", "--target", "0.4"])
    text = capsys.readouterr().out
    assert code == 0 and "accuracy vs pruning ratio" in text and "allocation" in text and "params" in text


def test_taylor_scores_masked_layers_too(dense_cnn, splits):
    from condense.prune.importance import taylor_grads
    from condense.prune.masks import masked_layers

    model = prune(copy.deepcopy(dense_cnn), MagnitudeConfig(ratio=0.5))
    batches = [splits.train.batch(torch.arange(32))]
    grads = taylor_grads(model, batches, 1)
    # a masked layer's weight is its parametrization's `original`, scored under the weight's name
    assert {f"{n}.weight" for n in masked_layers(model)} <= set(grads)
