"""Structured channel pruning: every zoo model, coupling, surgery, edit-log replay, bad input."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.models import build_model, replay_edits
from condense.prune import (
    ChannelConfig,
    PruneGraphError,
    SlimmingConfig,
    count_macs,
    dependency_groups,
    prune,
)
from condense.prune.graph import export_graph
from condense.prune.report import count_params

ZOO = ["mlp", "cnn", "resnet", "mobilenetv2", "vgg"]
SHAPES = [(1, 8), (3, 32)]


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is fastest and immune to oversubscription on busy CI."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _build(name: str, c: int, s: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_channels=c, image_size=s)


def _equivalent_by_zeroing(original: nn.Module, pruned: nn.Module, x: torch.Tensor) -> None:
    """Physically removing channels == zeroing their columns in every consumer of the original."""
    reference = copy.deepcopy(original).eval()
    groups = {g.root: g for g in dependency_groups(reference, (x[:1],))}
    for edit in pruned.condense_edits:
        for rec in edit["params"]["groups"]:
            g = groups[rec["root"]]
            gone = sorted(set(range(g.size)) - set(rec["keep"]))
            for mem in g.members:
                if mem.role == "in":
                    cols = [mem.offset + c * mem.expand + j for c in gone for j in range(mem.expand)]
                    with torch.no_grad():
                        reference.get_parameter(mem.param).index_fill_(mem.dim, torch.tensor(cols), 0.0)
    pruned.eval()
    with torch.no_grad():
        assert torch.allclose(pruned(x), reference(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("c,s", SHAPES)
@pytest.mark.parametrize("name", ZOO)
def test_zoo_channel_pruning(name, c, s):
    model = _build(name, c, s)
    original = copy.deepcopy(model)
    x = torch.randn(2, c, s, s)
    params0, macs0 = count_params(model), count_macs(model, x)
    prune(model, ChannelConfig(ratio=0.5, round_to=8))

    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    trained = copy.deepcopy(model).train()
    trained(x).sum().backward()  # train mode forward + backward work (on a copy: BN stats move)
    assert count_params(model) < 0.6 * params0
    assert count_macs(model, x) < 0.6 * macs0

    (edit,) = model.condense_edits
    assert edit["kind"] == "prune_channels" and edit["params"]["input_shapes"] == [[1, c, s, s]]
    for rec in edit["params"]["groups"]:
        assert len(rec["keep"]) % 8 == 0 and 0 < len(rec["keep"]) < rec["size"]
    for m in model.modules():  # every width is still a multiple of 8 (except the logits)
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % 8 == 0 and (m.in_channels % 8 == 0 or m.in_channels == c)
    assert model.classifier.out_features == 10

    # save/load: rebuild from spec, replay the edit log, load weights strictly -> identical outputs
    fresh = replay_edits(model.condense_spec.build(), model.condense_edits)
    fresh.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    _equivalent_by_zeroing(original, model, x)


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_residual_adds_keep_equal_channels(name):
    model = _build(name, 3, 32)
    prune(model, ChannelConfig(ratio=0.5, importance="l2", round_to=8))
    ep = export_graph(model, (torch.zeros(1, 3, 32, 32),))
    adds = [n for n in ep.graph.nodes if n.op == "call_function" and "add" in str(n.target)
            and all(hasattr(a, "meta") for a in n.args[:2])]
    assert adds
    for node in adds:
        a, b = node.args[:2]
        assert a.meta["val"].shape == b.meta["val"].shape
    widths = {int(n.meta["val"].shape[1]) for n in adds}
    assert all(w % 8 == 0 for w in widths)


def test_residual_group_spans_blocks():
    groups = dependency_groups(_build("resnet", 3, 32), (torch.zeros(1, 3, 32, 32),))
    stem = next(g for g in groups if g.root == "stem.conv")
    assert {"features.0.0.conv2", "features.0.1.conv2", "features.0.2.conv2"} <= set(stem.producers)
    assert not next(g for g in groups if g.root == "classifier").prunable


def test_mobilenet_depthwise_is_coupled_not_a_root():
    model = _build("mobilenetv2", 3, 32)
    groups = dependency_groups(model, (torch.zeros(1, 3, 32, 32),))
    dw = "features.2.conv.1.conv"
    (g,) = [g for g in groups if any(m.module == dw for m in g.members)]
    assert g.root == "features.2.conv.0.conv" and dw in g.modules
    prune(model, ChannelConfig(ratio=0.5))
    conv = model.get_submodule(dw)
    assert conv.groups == conv.in_channels == conv.out_channels == model.get_submodule("features.2.conv.0.conv").out_channels


class CatFlatNet(nn.Module):
    """Concatenation (channel offsets) and a flatten of C x 2 x 2 into a Linear, with BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(20)
        self.mix = nn.Conv2d(20, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16 * 4 + 8 * 4, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x):
        a = torch.relu(self.a(x))
        h = self.mix(self.bn(torch.cat([a, self.b(x)], dim=1)))
        z = torch.cat([torch.flatten(self.pool(h), 1), self.pool(a).view(x.size(0), -1)], 1)
        return self.classifier(torch.relu(self.bn1(self.fc(z))))


def test_cat_and_flatten_offsets():
    torch.manual_seed(0)
    model = CatFlatNet()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    original = copy.deepcopy(model)
    x = torch.randn(3, 3, 6, 6)
    prune(model, ChannelConfig(ratio=0.5, importance="random", seed=3), example_inputs=x[:1])
    assert (model.a.out_channels, model.b.out_channels, model.mix.out_channels) == (4, 6, 8)
    assert model.bn.num_features == 10 and model.fc.in_features == 8 * 4 + 4 * 4 and model.fc.out_features == 16
    _equivalent_by_zeroing(original, model, x)


class ShortcutFromInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.mid = nn.Conv2d(3, 16, 3, padding=1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        y = self.conv(x) + x  # tied to the network input: never prunable
        return self.classifier(self.mid(y).mean((2, 3)))


def test_input_tied_group_is_not_pruned():
    model = prune(ShortcutFromInput(), ChannelConfig(ratio=0.5), example_inputs=torch.zeros(1, 3, 8, 8))
    assert model.conv.out_channels == 3 and model.mid.out_channels == 8


def test_global_scope_and_per_group_ratios():
    model = _build("cnn", 1, 8)
    total = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    prune(model, ChannelConfig(ratio=0.5, scope="global"))
    kept = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert kept == total - round(0.5 * total)
    assert all(m.out_channels >= 1 for m in model.modules() if isinstance(m, nn.Conv2d))

    model = _build("cnn", 1, 8)
    prune(model, ChannelConfig(ratio=0.0, ratios={"features.2.0.conv": 0.75, "re:^features\\.0": 0.5}))
    assert model.features[2][0].conv.out_channels == 32
    assert model.features[0][0].conv.out_channels == 16 and model.features[0][1].conv.out_channels == 16
    assert model.features[1][0].conv.out_channels == 64
    with pytest.raises(ConfigError, match="classifier"):
        prune(_build("cnn", 1, 8), ChannelConfig(ratios={"classifier": 0.5}))


def test_targets_and_ignore_select_groups():
    model = _build("cnn", 1, 8)
    prune(model, ChannelConfig(ratio=0.5), targets=["features.1"], ignore=["features.1.1.conv"])
    assert model.features[1][0].conv.out_channels == 32 and model.features[1][1].conv.out_channels == 64
    assert model.features[0][0].conv.out_channels == 32
    with pytest.raises(ConfigError, match="matches no module"):
        prune(_build("cnn", 1, 8), ChannelConfig(), targets=["features.9"])


def test_importances_and_slimming():
    x = torch.randn(16, 1, 8, 8)
    data = [{"input": x[i:i + 8], "target": torch.randint(0, 10, (8,))} for i in (0, 8)]
    for imp in ("l1", "l2", "bn_gamma", "taylor", "random"):
        model = _build("resnet", 1, 8)
        prune(model, ChannelConfig(ratio=0.25, importance=imp), data=data)
        assert model(x).shape == (16, 10)
        assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError, match="taylor"):
        prune(_build("cnn", 1, 8), ChannelConfig(importance="taylor"))

    model = _build("cnn", 1, 8)
    with torch.no_grad():
        model.features[0][0].bn.weight[:16] = 0.0  # "slimmed" channels
    prune(model, SlimmingConfig(ratio=0.1))
    (edit,) = model.condense_edits
    first = next(r for r in edit["params"]["groups"] if r["root"] == "features.0.0.conv")
    assert all(k >= 16 for k in first["keep"])
    with pytest.raises(ConfigError, match="BatchNorm"):
        prune(_build("mlp", 1, 8), SlimmingConfig(ratio=0.5))


def test_ratio_removing_every_channel_names_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 1, 3), nn.ReLU(), nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    with pytest.raises(ConfigError, match="every channel of '0'"):
        prune(model, ChannelConfig(ratio=0.6), example_inputs=torch.zeros(1, 3, 8, 8))


def test_second_prune_call_appends_and_replays():
    model = _build("vgg", 3, 32)
    prune(model, ChannelConfig(ratio=0.5))
    prune(model, ChannelConfig(ratio=0.5, importance="l2"))
    assert len(model.condense_edits) == 2
    fresh = replay_edits(model.condense_spec.build(), model.condense_edits)
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


# ---------------------------------------------------------------- unsupported architectures


class PermuteNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv(x)
        x = x.view(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        return self.classifier(x.mean(1))


class RollNet(PermuteNet):
    def forward(self, x):
        return self.classifier(torch.roll(self.conv(x), 1, dims=1).mean((2, 3)))


class ShuffleNet(PermuteNet):
    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        x = x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.classifier(x.mean((2, 3)))


class GroupNormNet(PermuteNet):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, 16)

    def forward(self, x):
        return self.classifier(self.norm(self.conv(x)).mean((2, 3)))


class GroupedConvNet(PermuteNet):
    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)

    def forward(self, x):
        return self.classifier(self.grouped(self.conv(x)).mean((2, 3)))


class SliceNet(PermuteNet):
    def forward(self, x):
        return self.classifier(torch.cat([self.conv(x)[:, :8], self.conv(x)[:, 8:]], 1).mean((2, 3)))


class DataDependent(PermuteNet):
    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return self.classifier(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("net", [PermuteNet, GroupNormNet, GroupedConvNet, SliceNet])
def test_permute_groupnorm_grouped_conv_and_slices_are_followed(net):
    torch.manual_seed(0)
    model = net()
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    prune(model, ChannelConfig(ratio=0.5, importance="random"), example_inputs=x[:1])
    assert model.conv.out_channels == 8
    if net is GroupedConvNet:  # whole groups go: 2 of 4 groups of 4 channels remain
        assert (model.grouped.groups, model.grouped.in_channels, model.grouped.out_channels) == (2, 8, 8)
    if net is GroupNormNet:
        assert (model.norm.num_groups, model.norm.num_channels) == (2, 8)
    else:
        _equivalent_by_zeroing(original, model, x)
    with torch.no_grad():
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("net,match", [(RollNet, "roll at model level rolls channels"), (ShuffleNet, "reshape at model level reshapes")])
def test_ops_the_tracer_cannot_follow_freeze_their_group_by_name(net, match):
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (g,) = [g for g in dependency_groups(model, (torch.zeros(1, 3, 8, 8),)) if g.root == "conv"]
    assert not g.prunable and re.search(match, g.reason)
    with pytest.raises(ConfigError, match="no prunable channel group.*conv: .*" + match):
        prune(model, ChannelConfig(ratio=0.5), example_inputs=torch.zeros(1, 3, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_data_dependent_control_flow_is_refused_naming_the_model():
    with pytest.raises(PruneGraphError, match="torch.export cannot capture DataDependent"):
        prune(DataDependent(), ChannelConfig(ratio=0.5), example_inputs=torch.zeros(1, 3, 8, 8))


def test_masked_model_must_be_made_permanent_first():
    model = prune(_build("cnn", 1, 8), {"method": "magnitude", "ratio": 0.5})
    with pytest.raises(PruneGraphError, match="make_permanent"):
        prune(model, ChannelConfig())


def test_replay_on_wrong_architecture_is_clear():
    model = prune(_build("cnn", 1, 8), ChannelConfig(ratio=0.5))
    other = build_model("cnn", in_channels=1, image_size=8, width=16)
    with pytest.raises(ConfigError, match="prune_channels replay"):
        replay_edits(other, model.condense_edits)


def test_fx_graph_helpers_are_deterministic():
    a = dependency_groups(_build("mobilenetv2", 1, 8), (torch.zeros(1, 1, 8, 8),))
    torch.manual_seed(123)
    b = dependency_groups(build_model("mobilenetv2", in_channels=1, image_size=8), (torch.zeros(1, 1, 8, 8),))
    assert [(g.root, g.size, g.members) for g in a] == [(g.root, g.size, g.members) for g in b]


class _OneLinear(nn.Module):
    def __init__(self, body) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 8)
        self.body = body

    def forward(self, x):
        return self.body(self, x)


# ops that mix, reorder or index channels: each must freeze l1's group (a review found them passing
# silently: the output kept its shape and changed its values)
MIXERS = {
    "cumsum": (lambda m, x: m.l1(x).cumsum(-1)[:, :3], (4, 6)),
    "tril": (lambda m, x: m.l1(x).tril().sum(-1), (4, 8, 6)),
    "argmax": (lambda m, x: m.l1(x).max(dim=-1).indices.float(), (4, 6)),
    "conv over channels": (lambda m, x: nn.functional.conv1d(m.l1(x), torch.ones(5, 5, 3), padding=1).sum(-1), (4, 5, 6)),
    "pow exponent": (lambda m, x: (x[:, :1].abs() + 1).pow(m.l1(x))[:, :3], (4, 6)),  # 3 channels reach the output
    "clamp bound": (lambda m, x: torch.clamp(x.sum(-1, keepdim=True), min=m.l1(x))[:, :3], (4, 6)),
    "gather index": (lambda m, x: torch.gather(x.repeat(1, 2), 0, (m.l1(x) > 0).long()).sum(-1), (4, 6)),
    "mean as a feature": (lambda m, x: m.l1(x).mean(-1), (4, 6)),
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_ops_that_mix_channels_freeze_the_group(name):
    body, shape = MIXERS[name]
    model = _OneLinear(body).eval()
    (g,) = [g for g in dependency_groups(model, (torch.randn(*shape),)) if g.root == "l1"]
    assert not g.prunable and g.reason


def test_sum_over_channels_and_norm_statistics_stay_prunable():
    """A sum is exact (removed channels add 0); a keepdim mean / var is a norm's statistic (RMSNorm)."""
    rms = _OneLinear(lambda m, x: (m.l1(x) * torch.rsqrt(m.l1(x).pow(2).mean(-1, keepdim=True) + 1e-6)).sum(-1)).eval()
    (g,) = [g for g in dependency_groups(rms, (torch.randn(4, 6),)) if g.root == "l1"]
    assert g.prunable
