"""Self-supervised pretraining and distillation: losses against hand computations, the EMA target,
views, and the label-free verbs (which must never read a label)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset
from condense.models import build_model
from condense.ssl import (
    EMATarget,
    PretrainConfig,
    SSLDistillConfig,
    ViewConfig,
    Views,
    build_pretrain_task,
    ema_momentum,
    ema_update,
    knn_accuracy,
    pretrain,
    pretrain_fit,
    ssl_distill,
    ssl_distill_fit,
)
from condense.ssl.losses import (
    SEEDLoss,
    byol_loss,
    embedding_loss,
    masked_reconstruction_loss,
    nt_xent_loss,
    random_patch_mask,
    seed_loss,
)
from condense.train import Callback, TrainConfig, fit, train_model


def small_cnn(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=width, stages=2)


def quick(**train) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 32, "lr": 5e-3, "drop_last": True, "select_best": "last",
                          "progress": "off", **train})


@pytest.fixture(scope="module")
def images(digits_splits) -> ArrayDataset:
    """256 digits images with no labels at all (targets is None)."""
    return digits_splits.train.subset(range(256)).without_labels()


class LabelsRaise:
    """A dataset whose labels are withheld: touching them (or drawing labelled batches) raises."""

    labelled = False

    def __init__(self, inputs: torch.Tensor) -> None:
        self.inputs = inputs
        self.indices = torch.arange(len(inputs))

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def targets(self) -> torch.Tensor:
        raise AssertionError("a label was read")

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        raise AssertionError("the original dataset's batches (with labels) were drawn")


# -- losses against hand computations ----------------------------------------------------------
def test_nt_xent_two_pairs_by_hand():
    # unit vectors u0=(1,0), u1=(0,1) (view 1) and u2=(c,c), u3=(-c,c) (view 2), c = 1/sqrt(2);
    # positives 0<->2 and 1<->3. Dot products: u0.u1=0, u0.u2=c, u0.u3=-c, u1.u2=c, u1.u3=c, u2.u3=0.
    tau, c = 0.5, 1 / math.sqrt(2)
    e = lambda s: math.exp(s / tau)  # noqa: E731
    l0 = -math.log(e(c) / (e(0) + e(c) + e(-c)))   # anchor u0: others u1, u2(+), u3
    l1 = -math.log(e(c) / (e(0) + e(c) + e(c)))    # anchor u1: others u0, u2, u3(+)
    l2 = -math.log(e(c) / (e(c) + e(c) + e(0)))    # anchor u2: others u0(+), u1, u3
    l3 = -math.log(e(c) / (e(-c) + e(c) + e(0)))   # anchor u3: others u0, u1(+), u2
    expected = (l0 + l1 + l2 + l3) / 4
    z1 = torch.tensor([[1.0, 0.0], [0.0, 3.0]])     # norms do not matter: NT-Xent normalises
    z2 = torch.tensor([[2.0, 2.0], [-0.5, 0.5]])
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError):
        nt_xent_loss(z1[:1], z2[:1], tau)


def test_byol_loss_is_two_minus_two_cos():
    p = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]], requires_grad=True)
    z = torch.tensor([[0.0, 2.0], [3.0, 4.0], [-1.0, -1.0]], requires_grad=True)
    cos = [0.0, 1.0, -1.0]
    expected = sum(2 - 2 * c for c in cos) / 3
    loss = byol_loss(p, z)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert z.grad is None and p.grad is not None  # the target gets no gradient


def test_seed_loss_by_hand():
    s, t = [1.0, 0.0], [0.6, 0.8]
    queue = [[1.0, 0.0], [0.0, 1.0]]
    tau_s, tau_t = 0.5, 0.25
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    # the teacher itself is prepended to the queue: columns [t, q0, q1]
    lt = [dot(t, t) / tau_t] + [dot(t, q) / tau_t for q in queue]
    ls = [dot(s, t) / tau_s] + [dot(s, q) / tau_s for q in queue]
    pt = [math.exp(v) / sum(math.exp(w) for w in lt) for v in lt]
    log_ps = [v - math.log(sum(math.exp(w) for w in ls)) for v in ls]
    expected = -sum(p * lp for p, lp in zip(pt, log_ps, strict=True))
    got = seed_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor(queue), tau_s, tau_t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # an empty queue leaves only the sample itself: a one-way softmax, loss 0
    assert seed_loss(torch.tensor([s]), torch.tensor([t]), torch.zeros(0, 2)).item() == pytest.approx(0.0, abs=1e-7)


def test_seed_queue_is_fifo_buffer():
    m = SEEDLoss(dim=2, size=3)
    assert {n for n, _ in m.named_buffers()} == {"queue", "ptr", "filled"}
    assert len(m.entries()) == 0
    m.enqueue(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert int(m.filled) == 2 and int(m.ptr) == 2
    m.enqueue(torch.tensor([[3.0, 0.0], [0.0, -1.0]]))  # the second row overwrites the oldest
    assert int(m.filled) == 3 and int(m.ptr) == 1
    assert torch.equal(m.queue, torch.tensor([[0.0, -1.0], [0.0, 1.0], [1.0, 0.0]]))
    m.train()
    m(torch.randn(2, 2), torch.tensor([[5.0, 0.0], [0.0, 5.0]]))  # a training forward enqueues
    assert int(m.ptr) == 0
    m.eval()
    before = m.queue.clone()
    m(torch.randn(2, 2), torch.randn(2, 2))
    assert torch.equal(m.queue, before)  # not in eval mode


def test_mae_loss_only_on_masked_positions():
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    pred = torch.tensor([[[[1.0, 100.0], [-100.0, 3.0]]]])  # errors 1 and 9 on masked pixels
    assert masked_reconstruction_loss(pred, target, mask).item() == pytest.approx((1 + 9) / 2)
    pred2 = pred.clone()
    pred2[0, 0, 0, 1] = -7.0  # visible pixel: no effect
    assert masked_reconstruction_loss(pred2, target, mask).item() == pytest.approx(5.0)
    with pytest.raises(ConfigError):
        masked_reconstruction_loss(pred, target, torch.zeros_like(mask))


def test_random_patch_mask_hides_whole_patches():
    torch.manual_seed(0)
    m = random_patch_mask(5, 8, 8, patch=2, ratio=0.5)
    assert m.shape == (5, 1, 8, 8)
    patches = m.reshape(5, 4, 2, 4, 2)
    assert torch.equal(patches.amin(dim=(2, 4)), patches.amax(dim=(2, 4)))  # constant inside a patch
    assert patches[:, :, 0, :, 0].sum(dim=(1, 2)).tolist() == [8.0] * 5  # 8 of 16 patches each


def test_embedding_loss_cosine_and_mse():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert embedding_loss(s, t, "cosine").item() == pytest.approx(((1 - 0) + (1 - 1)) / 2)
    assert embedding_loss(s, t, "mse").item() == pytest.approx((1 + 1 + 1 + 1) / 4)
    with pytest.raises(ConfigError):
        embedding_loss(s, t[:, :1])


# -- EMA target ---------------------------------------------------------------------------------
def test_ema_update_and_momentum_schedule():
    torch.manual_seed(0)
    online, target = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    online[1].num_batches_tracked.fill_(7)
    before = copy.deepcopy(target.state_dict())
    ema_update(target, online, 0.9)
    for k, v in target.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * before[k] + 0.1 * online.state_dict()[k])
    assert int(target[1].num_batches_tracked) == 7
    assert ema_momentum(0.99, 0, 100, "cosine") == pytest.approx(0.99)
    assert ema_momentum(0.99, 50, 100, "cosine") == pytest.approx(0.995)
    assert ema_momentum(0.99, 100, 100, "cosine") == pytest.approx(1.0)
    assert ema_momentum(0.99, 50, 100, "constant") == 0.99


def test_byol_target_moves_as_ema_after_one_step(images):
    m = 0.9
    cfg = PretrainConfig(method="byol", ema_momentum=m, ema_schedule="constant", train=quick(max_steps=1))
    task, data = build_pretrain_task(small_cnn(), images, cfg)
    targets = [task.target_model, task.target_projector]
    onlines = [task.model, task.projector]
    before = [{n: p.detach().clone() for n, p in t.named_parameters()} for t in targets]
    cbs = task.callbacks()
    fit(task, data, cfg.train, None, cbs)
    task.close()
    for online, target, prev in zip(onlines, targets, before, strict=True):
        o = dict(online.named_parameters())
        for name, p in target.named_parameters():
            assert torch.allclose(p, m * prev[name] + (1 - m) * o[name].detach(), atol=1e-7), name
            assert not p.requires_grad
    assert cbs[0].updates == 1 and cbs[0].last_momentum == m


class CrashAt(Callback):
    """Simulates a crash at the start of an epoch (after the previous one was checkpointed)."""

    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch

    def on_epoch_begin(self, state) -> None:
        if self.epoch is not None and state.epoch == self.epoch:
            raise KeyboardInterrupt


def test_byol_resume_restores_ema_target(images, tmp_path):
    def run(folder: str, crash: int | None, resume: bool = False) -> tuple[dict, dict]:
        cfg = PretrainConfig(method="byol", train=quick(epochs=2, checkpoint_dir=str(tmp_path / folder)))
        task, data = build_pretrain_task(small_cnn(), images.subset(range(96)), cfg)
        try:
            fit(task, data, cfg.train, None, [*task.callbacks(), CrashAt(crash)], resume=resume)
        finally:
            task.close()
        return copy.deepcopy(task.model.state_dict()), copy.deepcopy(task.target_model.state_dict())

    model_a, target_a = run("a", None)
    with pytest.raises(KeyboardInterrupt):
        run("b", 1)
    model_b, target_b = run("b", None, resume=True)
    for a, b in ((model_a, model_b), (target_a, target_b)):
        assert all(torch.equal(a[k], b[k]) for k in a)


# -- views --------------------------------------------------------------------------------------
def test_views_shape_randomness_and_background_fill():
    torch.manual_seed(0)
    v = Views(ViewConfig(noise=0.0))
    x = torch.randn(16, 1, 8, 8)
    a, b = v(x), v(x)
    assert a.shape == x.shape and not torch.equal(a, b)
    flat = torch.full((4, 1, 8, 8), -0.7)  # an all-background image stays background (no grey fill)
    assert torch.allclose(v(flat), flat)
    assert Views(ViewConfig())(torch.randn(4, 5)).shape == (4, 5)  # vectors: noise only
    with pytest.raises(ConfigError):
        ViewConfig(erase=2.0)


# -- the verbs, without labels ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_pretrain_decreases_loss_without_labels(images, method):
    model = small_cnn(width=8)
    cfg = PretrainConfig(method=method, train=quick(epochs=4, batch_size=64, lr=1e-2))
    res = pretrain_fit(model, images, cfg)
    losses = [h["train_loss"] for h in res.history]
    assert res.model is model and len(losses) == 4
    assert losses[-1] < losses[0]
    assert not model.flatten._forward_hooks  # taps removed


@pytest.mark.parametrize("method", ["simclr", "byol", "mae"])
def test_no_label_is_read_by_pretrain(images, method):
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    pretrain(model, LabelsRaise(images.inputs[:64]), PretrainConfig(method=method, train=quick(max_steps=2)))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("data_kind", ["targets_none", "labels_raise"])
def test_ssl_distill_trains_without_labels(images, data_kind):
    teacher, student = small_cnn(1, width=8), small_cnn(2)
    t_before = copy.deepcopy(teacher.state_dict())
    data = images if data_kind == "targets_none" else LabelsRaise(images.inputs)
    cfg = SSLDistillConfig(queue_size=64, train=quick(epochs=3, batch_size=64, lr=1e-2))
    res = ssl_distill_fit(student, teacher, data, cfg)
    hist = res.history
    # the embedding loss falls; the SEED term is not comparable across epochs (the queue fills up)
    assert hist[-1]["train_embed"] < hist[0]["train_embed"]
    assert "train_seed" in hist[0]
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())  # frozen
    assert not teacher.flatten._forward_hooks and not student.flatten._forward_hooks


def test_ssl_distill_mse_through_adapter_and_conv_layers(images):
    # different widths and a 4-D layer: the adapter is a 1x1 conv + BN from make_projector
    teacher, student = small_cnn(1, width=8), small_cnn(2)
    cfg = SSLDistillConfig(embed="mse", seed_weight=0.0, student_layer="features.1", teacher_layer="features.1",
                           train=quick(max_steps=2))
    assert ssl_distill(student, teacher, images, cfg) is student


# -- bad input ----------------------------------------------------------------------------------
def test_labelled_data_to_label_free_verbs_is_an_error(digits_splits):
    labelled = digits_splits.train.subset(range(64))
    with pytest.raises(ConfigError, match="without_labels"):
        pretrain(small_cnn(), labelled, PretrainConfig(train=quick(max_steps=1)))
    with pytest.raises(ConfigError, match="without_labels"):
        ssl_distill(small_cnn(), small_cnn(1), labelled, SSLDistillConfig(train=quick(max_steps=1)))


def test_unlabelled_data_to_labelled_apis_is_an_error(images, digits_splits):
    with pytest.raises(ConfigError, match="labelled"):
        knn_accuracy(small_cnn(), images, digits_splits.val)
    with pytest.raises(ConfigError, match="labelled"):  # fine-tuning after pretraining needs labels
        train_model(small_cnn(), images, quick(max_steps=1))


def test_knn_accuracy_on_labelled_data(digits_splits):
    acc = knn_accuracy(small_cnn(), digits_splits.train, digits_splits.val, k=5)
    assert 0.0 <= acc <= 1.0


def test_config_errors_and_round_trip():
    with pytest.raises(ConfigError, match="did you mean"):
        PretrainConfig(method="simclrr")
    with pytest.raises(ConfigError, match="unknown key"):
        PretrainConfig.from_dict({"temprature": 0.1})
    with pytest.raises(ConfigError):
        SSLDistillConfig(embed_weight=0.0, seed_weight=0.0)
    cfg = PretrainConfig(method="byol", views={"noise": 0.0}, train={"epochs": 3})
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="no module named"):
        pretrain(small_cnn(), torch.randn(64, 1, 8, 8), PretrainConfig(layer="flaten", train=quick(max_steps=1)))
    with pytest.raises(ConfigError, match="batch of 1"):
        pretrain(small_cnn(), torch.randn(65, 1, 8, 8), PretrainConfig(train=quick(max_steps=1, drop_last=False)))


def test_ema_callback_state_round_trip():
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    cb = EMATarget([(online, target)], 0.5)
    state = cb.state_dict()
    with torch.no_grad():
        target.weight.add_(1.0)
    cb.load_state_dict(state)
    assert torch.equal(target.weight, state["targets"][0]["weight"])
