"""Data-free distillation (DeepInversion-style synthesis from BatchNorm statistics)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.distill.datafree import (
    BNStatisticsLoss,
    DataFreeConfig,
    bn_feature_loss,
    bn_statistics_loss,
    datafree_distill,
    synthesize,
    total_variation_l2,
)


@pytest.fixture(scope="module")
def teacher(digits_splits):
    """A small zoo CNN whose BatchNorm running statistics are those of the digits training images."""
    from condense.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=4, depth=1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        model(digits_splits.train.inputs)
    return model.eval()


def test_bn_feature_loss_hand_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # channel means (2, 4), biased variances (1, 4)
    got = bn_feature_loss(x, torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert got.item() == pytest.approx(3.0 + 4.0)
    img = torch.zeros(1, 1, 2, 2)
    img[0, 0, 0, 0] = 1.0  # horizontal, vertical and main-diagonal differences hold one 1; anti-diagonal 0
    assert total_variation_l2(img).item() == pytest.approx(1 + 1 + 0 + 1)
    assert total_variation_l2(torch.ones(3, 4)).item() == 0.0


def test_bn_statistics_loss_hooks_every_batchnorm(teacher, digits_splits):
    with BNStatisticsLoss(teacher, first_multiplier=2.0) as bn:
        assert len(bn.layers) == 3
        teacher(digits_splits.train.inputs)
        real = bn.loss().item()
        per = [bn.per_layer[n].item() for n, _ in bn.layers]
    assert real == pytest.approx(2 * per[0] + per[1] + per[2], rel=1e-5)
    assert real < 1e-3  # the running statistics ARE the statistics of these inputs
    assert not teacher.features[0][0].bn._forward_hooks  # hooks removed
    with pytest.raises(ConfigError, match="no BatchNorm"):
        BNStatisticsLoss(nn.Linear(3, 2))


def test_synthesized_inputs_match_bn_statistics_better_than_noise(teacher):
    before = copy.deepcopy(teacher.state_dict())
    cfg = DataFreeConfig(input_shape=[1, 8, 8], num_samples=40, batch_size=20, iterations=30, lr=0.25,
                         bn_weight=0.3, seed=0)
    res = synthesize(teacher, cfg)
    x = res.data.inputs
    assert x.shape == (40, 1, 8, 8) and torch.isfinite(x).all()
    noise = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loss_noise = bn_statistics_loss(teacher, noise)
    loss_synth = bn_statistics_loss(teacher, x)
    assert loss_synth < 0.5 * loss_noise, (loss_synth, loss_noise)
    for b in res.batches:  # measured on each batch before and after optimisation
        assert b["bn_loss_end"] < 0.5 * b["bn_loss_start"]
    assert torch.bincount(res.data.targets, minlength=10).tolist() == [4] * 10
    # the teacher is untouched: same weights and statistics, gradients re-enabled, still eval mode
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training
    short = cfg.replace(iterations=2, num_samples=8)
    assert torch.equal(synthesize(teacher, short).data.inputs, synthesize(teacher, short).data.inputs)  # seeded


def test_clamp_keeps_inputs_in_range(teacher):
    cfg = DataFreeConfig(input_shape=[1, 8, 8], num_samples=8, batch_size=8, iterations=5, clamp=[-0.5, 0.5])
    x = synthesize(teacher, cfg).data.inputs
    assert x.min() >= -0.5 and x.max() <= 0.5


def test_datafree_distill_runs_a_few_steps(teacher, digits_splits):
    from condense.models import build_model

    torch.manual_seed(1)
    student = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=2, depth=1)
    w0 = student.classifier.weight.detach().clone()
    cfg = DataFreeConfig.from_dict({
        "input_shape": [1, 8, 8], "num_samples": 16, "batch_size": 16, "iterations": 3,
        "distill": {"train": {"max_steps": 3, "batch_size": 8, "progress": "off"}},
    })
    assert cfg.distill.alpha == 1.0  # label-free by default
    out = datafree_distill(student, teacher, cfg)
    assert out(digits_splits.test.inputs[:4]).shape == (4, 10)
    assert not torch.equal(out.classifier.weight, w0)
    assert DataFreeConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_datafree_config_bad_input():
    with pytest.raises(ConfigError, match="input_shape"):
        DataFreeConfig()
    with pytest.raises(ConfigError, match="clamp"):
        DataFreeConfig(input_shape=[1, 8, 8], clamp=[1.0, 0.0])
    with pytest.raises(ConfigError, match="unknown key"):
        DataFreeConfig.from_dict({"input_shape": [1, 8, 8], "iteration": 3})
