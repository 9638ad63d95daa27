"""Sensitivity analysis and budgeted per-group ratio allocation."""
from __future__ import annotations

import copy

import pytest
import torch

from condense.core.errors import ConfigError
from condense.models import build_model
from condense.prune import ChannelConfig, allocate_ratios, count_macs, layer_sensitivity, prune
from condense.prune.report import count_params
from condense.prune.sensitivity import estimate_cost


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("resnet", in_channels=1, image_size=8, depth=8, width=8)
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        reference = model.eval()(x)

    def fidelity(m):  # higher is better: agreement with the unpruned model's logits
        with torch.no_grad():
            return -float(((m.eval()(x) - reference) ** 2).mean()) * 1e4

    return model, x, fidelity


def test_sensitivity_table_structure_and_model_untouched(setup):
    model, x, fidelity = setup
    before = copy.deepcopy(model.state_dict())
    ratios = (0.25, 0.5, 0.75)
    table = layer_sensitivity(model, fidelity, ratios=ratios, example_inputs=x[:1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not getattr(model, "condense_edits", [])
    assert table["method"] == "channel" and table["ratios"] == list(ratios)
    assert table["macs"] == count_macs(model, x[:1]) and table["params"] == count_params(model)
    assert len(table["entries"]) == 6  # 3 residual streams (one per stage) + conv1 of the 3 blocks
    for e in table["entries"]:
        assert len(e["metric"]) == len(e["macs"]) == len(e["params"]) == 3
        assert all(a > b for a, b in zip(e["macs"], e["macs"][1:], strict=False))  # more pruning, fewer MACs
        assert e["metric"][-1] <= table["baseline"] + 1e-9
    # the cost model is exact: estimate == measured MACs of a group pruned alone
    e = table["entries"][1]
    assert estimate_cost(table, {e["name"]: 0.5}) == e["macs"][1]
    assert estimate_cost(table, {}) == table["macs"]


@pytest.mark.parametrize("budget", ["macs", "params"])
def test_allocate_ratios_meets_budget(setup, budget):
    model, x, fidelity = setup
    table = layer_sensitivity(model, fidelity, ratios=(0.25, 0.5, 0.75), example_inputs=x[:1])
    ratios = allocate_ratios(table, 0.4, budget=budget)
    assert set(ratios) == {e["name"] for e in table["entries"]}
    pruned = prune(copy.deepcopy(model), ChannelConfig(ratio=0.0, ratios=ratios), example_inputs=x[:1])
    measured = count_macs(pruned, x[:1]) if budget == "macs" else count_params(pruned)
    base = table[budget]
    assert measured <= 0.6 * base
    assert measured == estimate_cost(table, ratios, budget)
    # least-sensitive groups get pruned at least as much as the most sensitive one
    drop = {e["name"]: table["baseline"] - e["metric"][1] for e in table["entries"]}
    assert ratios[min(drop, key=drop.get)] >= ratios[max(drop, key=drop.get)]


def test_allocate_ratios_errors(setup):
    model, x, fidelity = setup
    table = layer_sensitivity(model, fidelity, ratios=(0.1,), example_inputs=x[:1])
    with pytest.raises(ConfigError, match="largest tested ratios"):
        allocate_ratios(table, 0.9)
    with pytest.raises(ConfigError):
        allocate_ratios(table, 1.0)
    with pytest.raises(ConfigError):
        layer_sensitivity(model, fidelity, ratios=(1.0,), example_inputs=x[:1])


def test_magnitude_sensitivity(setup):
    model, x, fidelity = setup
    table = layer_sensitivity(model, fidelity, ratios=(0.5, 0.9), method="magnitude", targets=["Conv2d"], example_inputs=x[:1])
    assert {e["name"] for e in table["entries"]} == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    with pytest.raises(ConfigError, match="params"):
        allocate_ratios(table, 0.3)
    ratios = allocate_ratios(table, 0.3, budget="params")
    assert estimate_cost(table, ratios, "params") <= 0.7 * table["params"]
