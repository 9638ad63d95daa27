"""Channel-importance scorers come from one registry (`condense.prune.config.SCORERS`): FPGM is
added by one file, and the API, recipe validation and the CLI all take it by name; a misspelt
scorer fails where the config is read, with the known names."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import condense
from condense.core.errors import ConfigError
from condense.prune import ChannelConfig, dependency_groups
from condense.prune.config import SCORERS
from condense.prune.importance import group_scores


def _net() -> nn.Module:
    """conv a: filters 0-2 are three copies of one large filter, filter 3 is small and unlike them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        big = torch.randn(1, 3, 3) * 5
        for i in range(3):
            net[0].weight[i] = big
        net[0].weight[3] = -big.sign() * 0.5
        net[2].weight.fill_(1.0)  # every consumer column alike: only the producer filters differ
    return net


def test_fpgm_removes_the_redundant_filter_where_l1_removes_the_small_one():
    net, x = _net(), torch.randn(2, 1, 8, 8)
    groups = [g for g in dependency_groups(net, (x,)) if g.prunable]
    (g,) = [g for g in groups if g.root == "0"]
    fpgm, l1 = group_scores(net, [g], "fpgm")[g.root], group_scores(net, [g], "l1")[g.root]
    assert int(l1.argmin()) == 3  # the small filter
    assert int(fpgm.argmax()) == 3 and int(fpgm.argmin()) in (0, 1, 2)  # the unique filter is kept
    pruned = condense.prune(copy.deepcopy(net), ChannelConfig(ratio=0.25, importance="fpgm"), example_inputs=x,
                            targets=["0"])
    assert pruned[0].out_channels == 3
    kept = pruned.condense_edits[-1]["params"]["groups"][0]["keep"]
    assert 3 in kept


def test_every_scorer_is_registered_and_a_misspelt_one_lists_them():
    assert {"l1", "l2", "bn_gamma", "taylor", "gradient", "random", "fpgm"} <= set(SCORERS.names())
    with pytest.raises(ConfigError, match=r"ChannelConfig.importance: unknown importance 'fgpm' \(did you mean: fpgm"):
        ChannelConfig(importance="fgpm")


def test_recipe_validation_names_the_line_of_a_misspelt_scorer(tmp_path):
    from condense.recipes import load_recipe, validate_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: t\ndata: {name: digits}\nstages:\n  - name: teacher\n    kind: train\n"
                    "    model: {name: mlp, kwargs: {hidden: [32]}}\n    train: {epochs: 1}\n"
                    "  - {kind: prune, config: {method: channel, ratio: 0.5, importance: fgpm}}\n")
    with pytest.raises(ConfigError, match=r"r.yaml:8: .*unknown importance 'fgpm'.*did you mean: fpgm"):
        validate_recipe(load_recipe(path))


def test_cli_takes_a_registered_scorer_by_name(tmp_path, capsys):
    from condense.cli import main

    model = condense.build_model("mlp", hidden=[16], in_channels=1, image_size=8)
    condense.save(model, tmp_path / "m")
    args = ["prune", str(tmp_path / "m"), "--data", "digits", "--method", "channel", "--ratio", "0.5", "--recover", "none"]
    code = main([*args, "--importance", "fpgm", "--out", str(tmp_path / "p")])
    assert code == 0, capsys.readouterr().err
    assert condense.load(tmp_path / "p").features[0].fc.out_features == 8
    code = main([*args, "--importance", "fgpm", "--out", str(tmp_path / "q")])
    assert code != 0 and "did you mean: fpgm" in capsys.readouterr().err


def test_recipe_validation_builds_the_distillation_losses(tmp_path):
    """A misspelt loss name or hyper-parameter fails `recipe validate` at its line, not mid-run."""
    from condense.recipes import load_recipe, validate_recipe

    base = ("name: t\ndata: {name: digits}\nstages:\n  - name: teacher\n    kind: train\n"
            "    model: {name: mlp, kwargs: {hidden: [32]}}\n    train: {epochs: 1}\n"
            "  - {name: s, kind: distill, teacher: teacher, model: {name: mlp}, config: {losses: [LOSS]}}\n")
    path = tmp_path / "r.yaml"
    for loss, pattern in (("{name: sof_kd}", r"r.yaml:8: DistillConfig.losses: unknown distillation loss 'sof_kd' "
                                             r"\(did you mean: soft_kd"),
                          ("{name: soft_kd, temprature: 4}", r"r.yaml:8: DistillConfig.losses\[0\] \(soft_kd\): "
                                                             r"unknown key 'temprature'")):
        path.write_text(base.replace("LOSS", loss))
        with pytest.raises(ConfigError, match=pattern):
            validate_recipe(load_recipe(path))
    path.write_text(base.replace("LOSS", "{name: soft_kd, temperature: 4}"))
    validate_recipe(load_recipe(path))
