"""Low-rank factorization: exact algebra, rank selection, edit-log replay, export, recovery, CLI."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import condense
from condense.core.errors import ConfigError, InputFileError
from condense.lowrank import FactorizeConfig, LowRank, factorize, factorize_and_recover
from condense.lowrank.decompose import input_vectors, matrix_view, spectrum, whitener
from condense.lowrank.modules import build_lowrank

FORMS = [
    ("linear", lambda: nn.Linear(12, 20)),
    ("channel", lambda: nn.Conv2d(5, 7, 3, stride=2, padding=1)),
    ("spatial", lambda: nn.Conv2d(5, 7, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    ("tucker2", lambda: nn.Conv2d(6, 9, 3, padding=1)),
]


def _x(form: str, m: nn.Module, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 12) if form == "linear" else torch.randn(n, m.in_channels, 11, 13)


@pytest.mark.parametrize("form,make", FORMS)
@pytest.mark.parametrize("whiten", [False, True])
def test_full_rank_factorization_is_exact(form, make, whiten):
    torch.manual_seed(0)
    m = make()
    x = _x(form, m)
    chol = None
    if whiten:
        z = input_vectors(m, form, x).double()
        chol = whitener(z.T @ z / len(z))
    rank = [m.in_channels, m.out_channels] if form == "tucker2" else [min(matrix_view(m, form).shape)]
    new = build_lowrank(m, form, rank, spectrum(matrix_view(m, form), chol), chol)
    with torch.no_grad():
        assert torch.allclose(new(x), m(x), atol=1e-5)


def test_whitened_svd_has_lower_output_error_than_plain_on_correlated_inputs():
    """The activation-aware truncation minimises the error on the data, the plain one on the weights."""
    torch.manual_seed(0)
    m = nn.Linear(32, 32)
    mix = torch.randn(32, 4) @ torch.randn(4, 32) + 0.05 * torch.randn(32, 32)  # inputs live near a 4-d subspace
    x = torch.randn(2000, 32) @ mix
    z = x.double()
    chol = whitener(z.T @ z / len(z))
    plain = build_lowrank(m, "linear", [4], spectrum(m.weight), None)
    aware = build_lowrank(m, "linear", [4], spectrum(m.weight, chol), chol)
    with torch.no_grad():
        e_plain = (plain(x) - m(x)).pow(2).mean()
        e_aware = (aware(x) - m(x)).pow(2).mean()
    assert e_aware < 0.2 * e_plain


def test_hand_computed_rank_one():
    """W = u v^T + small: the rank-1 factors reproduce u v^T (up to sign)."""
    m = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) + torch.tensor([[0.0, 1e-3, 0.0], [0.0, 0.0, 0.0]]))
    new = build_lowrank(m, "linear", [1], spectrum(m.weight), None)
    assert new.down.weight.shape == (1, 3) and new.up.weight.shape == (2, 1)
    assert torch.allclose(new.up.weight @ new.down.weight, m.weight, atol=1e-6)


# ----------------------------------------------------------------------------- on a trained model


@pytest.fixture(scope="module")
def teacher(digits_splits):
    torch.manual_seed(0)
    m = condense.build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=16)
    return condense.train_model(m, digits_splits.train, condense.TrainConfig(epochs=6, lr=0.003, progress="off")).model


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_budget_is_met_and_activation_aware_beats_plain(teacher, digits_splits):
    base = condense.evaluate(teacher, digits_splits.test)["accuracy"]
    accs = {}
    for method in ("svd", "activation_svd"):
        f = factorize(copy.deepcopy(teacher), FactorizeConfig(method=method, rank_by="params", ratio=0.6), data=digits_splits.train)
        rep = f.condense_lowrank_report
        assert rep["params_removed"] >= 0.6
        assert rep["factorized"] >= 3 and any(isinstance(m, LowRank) for m in f.modules())
        assert all(r % 8 == 0 for row in rep["layers"] if "rank" in row for r in row["rank"])
        accs[method] = condense.evaluate(f, digits_splits.test)["accuracy"]
    assert accs["activation_svd"] > accs["svd"]
    assert accs["activation_svd"] > 0.5 and base > 0.9


def test_energy_selection_and_layers_left_alone_are_reported(teacher, digits_splits):
    f = factorize(copy.deepcopy(teacher), FactorizeConfig(method="svd", rank_by="energy", energy=0.9))
    rep = f.condense_lowrank_report
    # the first conv has one input channel: no rank below its 9 taps makes it smaller
    assert "features.0.0.conv" in rep["skipped"] and "left alone" in rep["skipped"]["features.0.0.conv"]
    for row in rep["layers"]:
        if "rank" in row:
            assert row["energy"] >= 0.9 and row["params_after"] < row["params"] and row["macs_after"] < row["macs"]


def test_sensitivity_selection_meets_the_budget(teacher, digits_splits):
    f = factorize(copy.deepcopy(teacher), FactorizeConfig(rank_by="sensitivity", ratio=0.4, sensitivity_ratios=[0.25, 0.5, 0.75]),
                  data=digits_splits.train, eval_data=digits_splits.val)
    rep = f.condense_lowrank_report
    assert rep["params_removed"] >= 0.4
    assert rep["sensitivity"]["entries"] and rep["sensitivity"]["baseline"] > 0.5


def test_saved_model_replays_the_factorization_and_exports(teacher, digits_splits, tmp_path):
    f = factorize(copy.deepcopy(teacher), {"rank_by": "params", "ratio": 0.5}, data=digits_splits.train)
    condense.save(f, tmp_path / "f")
    edits = json.loads((tmp_path / "f" / "condense.json").read_text())["edits"]
    assert edits[-1]["kind"] == "factorize"
    g = condense.load(tmp_path / "f")
    x = condense.example_inputs(digits_splits.test, 5)
    with torch.no_grad():
        assert torch.equal(g(x), f.eval()(x))
    res = condense.export_onnx(g, condense.example_inputs(digits_splits.test, 1), tmp_path / "f.onnx")
    assert res.max_abs_diff < 1e-4


def test_edit_log_naming_a_missing_layer_is_refused(teacher, digits_splits, tmp_path):
    f = factorize(copy.deepcopy(teacher), {"method": "svd", "rank": 8, "targets": ["classifier"]})
    condense.save(f, tmp_path / "f")
    meta_path = tmp_path / "f" / "condense.json"
    meta = json.loads(meta_path.read_text())
    meta["edits"][-1]["params"]["layers"] = {"features.9.conv": {"form": "channel", "rank": [8]}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="features.9.conv.*does not have"):
        condense.load(tmp_path / "f")


def test_bad_inputs_are_clear(teacher, digits_splits):
    with pytest.raises(ConfigError, match="larger than min\\(out, in\\) = 10"):
        factorize(copy.deepcopy(teacher), {"method": "svd", "ranks": {"classifier": 64}})
    with pytest.raises(ConfigError, match="cannot be met; the closest reachable .* removes"):
        factorize(copy.deepcopy(teacher), {"method": "svd", "rank_by": "params", "ratio": 0.99})
    with pytest.raises(ConfigError, match="targets.*matches no"):
        factorize(copy.deepcopy(teacher), {"method": "svd", "targets": ["re:^nothing_here"]})
    with pytest.raises(ConfigError, match="not a selected layer.*did you mean"):
        factorize(copy.deepcopy(teacher), {"method": "svd", "ranks": {"clasifier": 8}})
    with pytest.raises(ConfigError, match="pass calibration data"):
        factorize(copy.deepcopy(teacher), {"method": "activation_svd"})
    with pytest.raises(ConfigError, match="rank_by"):
        FactorizeConfig.from_dict({"rank_by": "enrgy"})


def test_latency_check_times_each_replacement(teacher, digits_splits):
    f = factorize(copy.deepcopy(teacher), {"rank_by": "params", "ratio": 0.5, "check_latency": True}, data=digits_splits.train)
    timed = [r for r in f.condense_lowrank_report["layers"] if "latency_ms_before" in r]
    assert timed and all(r["latency_ms_before"] > 0 and r["latency_ms_after"] > 0 for r in timed)
    for r in timed:  # kept only when measured faster
        assert ("rank" in r) == (r["latency_ms_after"] < r["latency_ms_before"])


def test_factorize_and_recover_wins_accuracy_back(teacher, digits_splits):
    model, info = factorize_and_recover(
        copy.deepcopy(teacher), {"method": "svd", "rank_by": "params", "ratio": 0.7},
        {"method": "distill", "train": {"epochs": 2, "lr": 0.002, "progress": "off"}}, digits_splits.train, digits_splits.val)
    assert info["params_fraction"] <= 0.3 + 0.02
    assert info["val"]["recovered"] >= info["val"]["edited"]
    assert info["fit"]["epochs_run"] == 2 and info["metric"] == "accuracy"


def test_cli_factorize(teacher, digits_splits, tmp_path, capsys):
    from condense.cli import main

    condense.save(teacher, tmp_path / "t", extra={"data": {"name": "digits", "kwargs": {}}})
    rc = main(["factorize", str(tmp_path / "t"), "--data", "digits", "--rank-by", "params", "--ratio", "0.5",
               "--epochs", "1", "--out", str(tmp_path / "f"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params_fraction"] < 0.55 and out["ranks"] and out["test_accuracy"] > 0.5
    assert isinstance(condense.load(tmp_path / "f"), nn.Module)
    rc = main(["factorize", str(tmp_path / "t"), "--data", "digits", "--method", "svd", "--rank", "4096",
               "--targets", "classifier", "--out", str(tmp_path / "g")])
    assert rc == 2 and "larger than min(out, in)" in capsys.readouterr().err
