"""The zoo's LeNet-5 (Caffe variant): Han et al. 2015's sizes, tiny images, pruning both ways."""
from __future__ import annotations

import copy

import torch
from torch import nn

from condense.models import build_model, replay_edits
from condense.prune import ChannelConfig, MagnitudeConfig, make_permanent, prune, sparsity_report


def _mnist_lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", in_channels=1, image_size=28, num_classes=10)


def test_caffe_sizes_match_han_et_al() -> None:
    model = _mnist_lenet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]
    assert (model.fc1.in_features, model.fc1.out_features) == (800, 500)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert weights == 430_500 and sum(p.numel() for p in model.parameters()) == 431_080
    assert not any(isinstance(m, nn.ReLU) for m in (model.act1, model.act2))  # Caffe: no conv ReLU
    assert isinstance(build_model("lenet5", conv_act=True).act1, nn.ReLU)
    bound = (3 / 800) ** 0.5  # Caffe xavier: U(-sqrt(3 / fan_in), +sqrt(3 / fan_in))
    assert model.fc1.weight.abs().max() <= bound and model.fc1.weight.abs().max() > 0.9 * bound
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_tiny_and_colour_images_build() -> None:
    for c, s, feats in [(1, 1, 50), (1, 8, 50), (3, 32, 1250)]:
        model = build_model("lenet5", in_channels=c, image_size=s, num_classes=7)
        assert model.fc1.in_features == feats
        assert model(torch.randn(2, c, s, s)).shape == (2, 7)


def test_channel_pruning_removes_channels_and_replays() -> None:
    model = _mnist_lenet()
    x = torch.randn(4, 1, 28, 28)
    prune(model, ChannelConfig(ratio=0.5), example_inputs=x[:1])
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (10, 25, 250)
    assert model.fc1.in_features == 25 * 16
    rebuilt = replay_edits(_mnist_lenet(), model.condense_edits)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_global_magnitude_pruning_to_han_compression() -> None:
    model = _mnist_lenet()
    ref = copy.deepcopy(model)
    prune(model, MagnitudeConfig(ratio=11 / 12, scope="global"))
    make_permanent(model)
    report = sparsity_report(model)["global"]
    assert abs(report["sparsity"] - 11 / 12) < 1e-3
    assert sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))) \
        == 430_500 - round(11 / 12 * 430_500)
    assert set(model.state_dict()) == set(ref.state_dict())
