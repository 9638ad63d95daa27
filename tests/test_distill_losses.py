"""Distillation losses and adapters, each checked against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError, UnknownNameError
from condense.distill.adapters import make_projector
from condense.distill.losses import (
    LOSSES,
    NEEDS,
    AttentionLoss,
    CELoss,
    CombinedLoss,
    CRDLoss,
    DKDLoss,
    FitNetLoss,
    HardKDLoss,
    LossInputs,
    PKTLoss,
    RKDLoss,
    SoftKDLoss,
    attention_loss,
    average_teacher_probs,
    build_losses,
    ce_loss,
    crd_info_nce,
    dkd_loss,
    dkd_parts,
    fitnet_loss,
    hard_kd_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    soft_kd_from_probs,
    soft_kd_loss,
)

S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T = [[2.0, 0.0, 1.0], [0.5, 0.5, 2.0]]
Y = [1, 2]


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------------------- registry / inputs
def test_registry_has_every_loss_and_valid_needs():
    assert set(LOSSES.names()) == {
        "soft_kd", "hard_kd", "fitnet", "attention", "rkd", "pkt", "crd", "dkd", "ce", "embedding", "hidden_state", "minilm",
        "token_states", "token_kd",
    }
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        assert cls.needs and cls.needs <= NEEDS, name
        assert callable(cls.forward_inputs) and callable(cls.materialize)


# ------------------------------------------------------------------------------------ soft KD
def test_soft_kd_matches_hand_computation():
    temp = 2.0
    expected = 0.0
    for s_row, t_row in zip(S, T, strict=True):
        p_t = _softmax([v / temp for v in t_row])
        p_s = _softmax([v / temp for v in s_row])
        expected += _kl(p_t, p_s)
    expected = expected / 2 * temp**2
    got = soft_kd_loss(_t(S), _t(T), temp)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert SoftKDLoss(temperature=temp)(_t(S), _t(T)).item() == pytest.approx(expected, rel=1e-9)
    inp = LossInputs(student_logits=_t(S), teacher_logits=_t(T))
    assert SoftKDLoss(temperature=temp).forward_inputs(inp).item() == pytest.approx(expected, rel=1e-9)


def test_soft_kd_zero_for_equal_logits():
    x = torch.randn(4, 5, dtype=torch.float64)
    assert soft_kd_loss(x, x.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_kd_gradient_t_squared_scaling():
    s = _t(S) - _t(S).mean(1, keepdim=True)  # zero-mean logits, as in Hinton's high-T argument
    t = _t(T) - _t(T).mean(1, keepdim=True)
    b, c = s.shape

    def grad(temp: float, scale: bool) -> torch.Tensor:
        x = s.clone().requires_grad_(True)
        loss = soft_kd_loss(x, t, temp)
        (loss if scale else loss / temp**2).backward()
        return x.grad

    # exact gradient: T^2 * (1/B) * (1/T) (softmax(s/T) - softmax(t/T))
    for temp in (1.0, 4.0):
        exact = temp * (F.softmax(s / temp, 1) - F.softmax(t / temp, 1)) / b
        assert torch.allclose(grad(temp, True), exact, atol=1e-12)
    # without the T^2 factor the gradient shrinks like 1/T^2; with it, it stays put
    g10, g20 = grad(10.0, False).norm().item(), grad(20.0, False).norm().item()
    assert g10 / g20 == pytest.approx(4.0, rel=0.02)
    k10, k20 = grad(10.0, True).norm().item(), grad(20.0, True).norm().item()
    assert k10 / k20 == pytest.approx(1.0, rel=0.02)
    # high-T limit: gradient -> (s - t) / (C * B) (Hinton et al., eq. 4)
    assert torch.allclose(grad(500.0, True), (s - t) / (c * b), rtol=0.0, atol=1e-3)


def test_soft_kd_from_probs_and_teacher_averaging():
    temp = 3.0
    p = F.softmax(_t(T) / temp, dim=1)
    assert soft_kd_from_probs(_t(S), p, temp).item() == pytest.approx(soft_kd_loss(_t(S), _t(T), temp).item())
    # two teachers, averaged probabilities, checked by hand
    t2 = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    avg = average_teacher_probs([_t(T), _t(t2)], temp)
    expected = 0.0
    for r in range(2):
        pa = _softmax([v / temp for v in T[r]])
        pb = _softmax([v / temp for v in t2[r]])
        target = [(x + y) / 2 for x, y in zip(pa, pb, strict=True)]
        assert avg[r].tolist() == pytest.approx(target)
        expected += _kl(target, _softmax([v / temp for v in S[r]]))
    expected = expected / 2 * temp**2
    inp = LossInputs(student_logits=_t(S), teacher_logits=None, teacher_probs=avg)
    assert SoftKDLoss(temperature=temp).forward_inputs(inp).item() == pytest.approx(expected)
    # zero-probability classes are fine (0 log 0 = 0)
    onehot = _t([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.isfinite(soft_kd_from_probs(_t(S), onehot, temp))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "4", True])
def test_temperature_must_be_positive_number(bad):
    with pytest.raises(ConfigError, match="temperature"):
        SoftKDLoss(temperature=bad)
    with pytest.raises(ConfigError, match="temperature"):
        DKDLoss(temperature=bad)
    with pytest.raises(ConfigError, match="temperature"):
        CRDLoss("a", "b", n_data=10, temperature=bad)


# ---------------------------------------------------------------------------- hard KD and CE
def test_hard_kd_is_ce_against_teacher_argmax():
    # teacher argmax: row 0 -> class 0, row 1 -> class 2
    expected = -(math.log(_softmax(S[0])[0]) + math.log(_softmax(S[1])[2])) / 2
    assert hard_kd_loss(_t(S), _t(T)).item() == pytest.approx(expected)
    assert HardKDLoss()(_t(S), _t(T)).item() == pytest.approx(F.cross_entropy(_t(S), _t(T).argmax(1)).item())
    inp = LossInputs(student_logits=_t(S), teacher_probs=F.softmax(_t(T), 1))
    assert HardKDLoss().forward_inputs(inp).item() == pytest.approx(expected)


def test_ce_with_label_smoothing_by_hand():
    eps, c = 0.1, 3
    expected = 0.0
    for row, y in zip(S, Y, strict=True):
        logp = [math.log(v) for v in _softmax(row)]
        q = [(1 - eps) * (k == y) + eps / c for k in range(c)]
        expected -= sum(qk * lk for qk, lk in zip(q, logp, strict=True))
    expected /= 2
    assert ce_loss(_t(S), torch.tensor(Y), eps).item() == pytest.approx(expected)
    inp = LossInputs(student_logits=_t(S), targets=torch.tensor(Y))
    assert CELoss(label_smoothing=eps).forward_inputs(inp).item() == pytest.approx(expected)
    with pytest.raises(ConfigError, match="label_smoothing"):
        CELoss(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="targets"):
        CELoss().forward_inputs(LossInputs(student_logits=_t(S)))


# ---------------------------------------------------------------------------------------- DKD
def _dkd_by_hand(s_rows, t_rows, ys, temp):
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(s_rows, t_rows, ys, strict=True):
        ps = _softmax([v / temp for v in s_row])
        pt = _softmax([v / temp for v in t_row])
        tckd += _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        nts = [v for k, v in enumerate(ps) if k != y]
        ntt = [v for k, v in enumerate(pt) if k != y]
        nckd += _kl([v / sum(ntt) for v in ntt], [v / sum(nts) for v in nts])
    n = len(ys)
    return tckd / n * temp**2, nckd / n * temp**2


def test_dkd_matches_hand_computation_and_sum_of_parts():
    temp = 4.0
    tckd_h, nckd_h = _dkd_by_hand(S, T, Y, temp)
    tckd, nckd = dkd_parts(_t(S), _t(T), torch.tensor(Y), temp)
    assert tckd.item() == pytest.approx(tckd_h)
    assert nckd.item() == pytest.approx(nckd_h)
    total = dkd_loss(_t(S), _t(T), torch.tensor(Y), alpha=1.0, beta=8.0, temperature=temp)
    assert total.item() == pytest.approx(tckd.item() + 8.0 * nckd.item())
    assert total.item() == pytest.approx(tckd_h + 8 * nckd_h)
    inp = LossInputs(student_logits=_t(S), teacher_logits=_t(T), targets=torch.tensor(Y))
    assert DKDLoss().forward_inputs(inp).item() == pytest.approx(total.item())  # defaults 1, 8, 4
    assert DKDLoss(alpha=2.0, beta=0.5, temperature=temp).forward_inputs(inp).item() == pytest.approx(
        2 * tckd_h + 0.5 * nckd_h
    )


def test_dkd_reformulates_classic_kd():
    # KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD, per sample (the paper's eq. 7)
    temp = 2.0
    for r in range(2):
        s, t, y = _t([S[r]]), _t([T[r]]), torch.tensor([Y[r]])
        tckd, nckd = dkd_parts(s, t, y, temp)
        p_ty = _softmax([v / temp for v in T[r]])[Y[r]]
        assert soft_kd_loss(s, t, temp).item() == pytest.approx(tckd.item() + (1 - p_ty) * nckd.item())


def test_dkd_stable_for_extreme_logits_and_needs_targets():
    s = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    loss = dkd_loss(s, torch.tensor([[-1e4, 1e4, 0.0]]), torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    with pytest.raises(ConfigError, match="targets"):
        DKDLoss().forward_inputs(LossInputs(student_logits=_t(S), teacher_logits=_t(T)))


# ------------------------------------------------------------------------------------- FitNet
def test_fitnet_mse_by_hand_and_lazy_projector():
    s, t = _t([[1.0, 2.0], [3.0, 4.0]]), _t([[0.0, 2.0], [5.0, 4.0]])
    assert fitnet_loss(s, t).item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    loss = FitNetLoss("s.layer", "t.layer")
    assert loss(s, t).item() == pytest.approx(1.25) and loss.projector is None  # same shape: none
    # different shapes: the projector is created from the observed shapes by materialize()
    fs, ft = torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)
    inp = LossInputs(student_features={"s.layer": fs}, teacher_features={"t.layer": ft})
    loss = FitNetLoss("s.layer", "t.layer")
    assert list(loss.parameters()) == []
    loss.materialize(inp)
    params = list(loss.parameters())
    assert params, "materialize must create the projector before the optimizer is built"
    value = loss.forward_inputs(inp)
    expected = F.mse_loss(loss.projector(fs), ft)
    assert value.item() == pytest.approx(expected.item())
    value.backward()
    assert all(p.grad is not None for p in params)
    assert loss.feature_layers() == (("s.layer",), ("t.layer",))
    with pytest.raises(ConfigError, match="projector"):
        FitNetLoss("a", "b", adapter="none")(fs, ft)
    with pytest.raises(ConfigError, match="adapter"):
        FitNetLoss("a", "b", adapter="alwyas")
    with pytest.raises(ConfigError, match="no student feature 'missing'"):
        FitNetLoss("missing", "t.layer").forward_inputs(inp)


# ---------------------------------------------------------------------------------- attention
def test_attention_by_hand():
    # student (1, 2, 1, 2): channel values at the two positions
    fs = _t([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    ft = _t([[[[2.0, 2.0]], [[0.0, 0.0]], [[2.0, 2.0]]]])  # 3 channels: counts may differ
    qs = [(1 + 9) / 2, (4 + 0) / 2]  # mean_c f^2 per position
    qt = [(4 + 0 + 4) / 3, (4 + 0 + 4) / 3]
    ns, nt = math.hypot(*qs), math.hypot(*qt)
    expected = sum((a / ns - b / nt) ** 2 for a, b in zip(qs, qt, strict=True)) / 2
    assert attention_loss(fs, ft).item() == pytest.approx(expected)


def test_attention_different_channels_and_sizes():
    fs, ft = torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)
    inp = LossInputs(student_features={"a": fs}, teacher_features={"b": ft})
    got = AttentionLoss("a", "b").forward_inputs(inp)
    qs = F.adaptive_avg_pool2d(fs.pow(2).mean(1, keepdim=True), (4, 4)).flatten(1)
    qt = ft.pow(2).mean(1).flatten(1)
    expected = (F.normalize(qs, dim=1) - F.normalize(qt, dim=1)).pow(2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert attention_loss(ft, fs).item() == pytest.approx(got.item(), rel=1e-5)  # symmetric pooling
    assert attention_loss(fs, 3.0 * fs).item() == pytest.approx(0.0, abs=1e-10)  # scale-free
    assert torch.isfinite(attention_loss(torch.randn(2, 8, 6, 10), torch.randn(2, 4, 10, 6)))
    with pytest.raises(ConfigError, match="p"):
        AttentionLoss("a", "b", p=0)


# ---------------------------------------------------------------------------------------- RKD
def _rkd_by_hand(s_pts, t_pts):
    n = len(s_pts)

    def dists(pts):
        d = [[math.dist(pts[i], pts[j]) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mu for v in row] for row in d]

    def angles(pts):
        out = []
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    u = [a - b for a, b in zip(pts[i], pts[j], strict=True)]
                    v = [a - b for a, b in zip(pts[k], pts[j], strict=True)]
                    nu, nv = math.hypot(*u), math.hypot(*v)
                    out.append(0.0 if nu == 0 or nv == 0 else sum(a * b for a, b in zip(u, v, strict=True)) / (nu * nv))
        return out

    def smooth_l1(a, b):
        return sum(0.5 * (x - y) ** 2 if abs(x - y) < 1 else abs(x - y) - 0.5 for x, y in zip(a, b, strict=True)) / len(a)

    ds, dt = dists(s_pts), dists(t_pts)
    dist = smooth_l1([v for r in ds for v in r], [v for r in dt for v in r])
    return dist, smooth_l1(angles(s_pts), angles(t_pts))


def test_rkd_by_hand():
    s_pts = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    t_pts = [[0.0, 0.0, 1.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    dist_h, angle_h = _rkd_by_hand(s_pts, t_pts)
    assert rkd_distance_loss(_t(s_pts), _t(t_pts)).item() == pytest.approx(dist_h, rel=1e-6)
    assert rkd_angle_loss(_t(s_pts), _t(t_pts)).item() == pytest.approx(angle_h, rel=1e-6)
    assert rkd_loss(_t(s_pts), _t(t_pts)).item() == pytest.approx(25 * dist_h + 50 * angle_h, rel=1e-6)


def test_rkd_invariant_to_uniform_scaling_and_zero_when_equal():
    s, t = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 4, 2, dtype=torch.float64)
    base = rkd_loss(s, t).item()
    assert base > 0
    assert rkd_loss(7.5 * s, t).item() == pytest.approx(base, rel=1e-6)
    assert rkd_loss(s, 0.1 * t).item() == pytest.approx(base, rel=1e-6)
    assert rkd_loss(s, 3.0 * s).item() == pytest.approx(0.0, abs=1e-9)
    x = torch.randn(5, 8, requires_grad=True)
    RKDLoss("a", "b")(x, torch.randn(5, 3)).backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ConfigError, match="both 0"):
        RKDLoss("a", "b", w_dist=0, w_angle=0)


# ---------------------------------------------------------------------------------------- PKT
def test_pkt_by_hand_and_zero_for_identical():
    s_pts = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    t_pts = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    def cond(pts):
        k = []
        for a in pts:
            row = []
            for b in pts:
                cos = sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))
                row.append((cos + 1) / 2)
            k.append([v / sum(row) for v in row])
        return k

    ps, pt = cond(s_pts), cond(t_pts)
    expected = sum(pt[i][j] * math.log(pt[i][j] / ps[i][j]) for i in range(3) for j in range(3)) / 9
    assert pkt_loss(_t(s_pts), _t(t_pts)).item() == pytest.approx(expected, rel=1e-5)
    f = torch.randn(4, 3, 2, 2)
    assert PKTLoss("a", "b")(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------------------------- CRD
def test_crd_info_nce_by_hand():
    z_s = F.normalize(_t([[1.0, 0.0], [1.0, 1.0]]), dim=1)
    z_t = F.normalize(_t([[1.0, 1.0], [0.0, 1.0]]), dim=1)
    mem_s = F.normalize(_t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    mem_t = F.normalize(_t([[0.0, 1.0], [1.0, -1.0], [1.0, 0.0]]), dim=1)
    index, negatives, tau = torch.tensor([0, 1]), torch.tensor([0, 2, 1]), 0.5
    expected = 0.0
    for b in range(2):
        pos = float(z_s[b] @ z_t[b])
        for anchor, mem in ((z_s[b], mem_t), (z_t[b], mem_s)):
            negs = [float(anchor @ mem[k]) for k in negatives.tolist() if k != int(index[b])]
            expected += -pos / tau + math.log(math.exp(pos / tau) + sum(math.exp(n / tau) for n in negs))
    expected /= 2
    got = crd_info_nce(z_s, z_t, mem_s, mem_t, index, negatives, tau)
    assert got.item() == pytest.approx(expected)


def test_crd_memory_heads_and_gradients():
    torch.manual_seed(0)
    n_data = 20
    loss = CRDLoss("s", "t", n_data=n_data, s_dim=12, t_dim=24, feat_dim=8, n_negatives=16)
    assert {"memory_s", "memory_t"} <= set(loss.state_dict())
    assert loss.needs == {"features", "index"}
    before_s, before_t = loss.memory_s.clone(), loss.memory_t.clone()
    fs = torch.randn(4, 3, 2, 2, requires_grad=True)  # flattened to 12
    ft = torch.randn(4, 24)
    index = torch.tensor([3, 7, 11, 19])
    value = loss.forward_inputs(LossInputs(student_features={"s": fs}, teacher_features={"t": ft}, index=index))
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    for p in loss.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    changed = (loss.memory_s != before_s).any(1)
    assert changed.nonzero().flatten().tolist() == index.tolist()
    assert ((loss.memory_t != before_t).any(1)).nonzero().flatten().tolist() == index.tolist()
    assert torch.allclose(loss.memory_s.norm(dim=1), torch.ones(n_data, dtype=loss.memory_s.dtype))
    # eval mode: no memory update
    loss.eval()
    snap = loss.memory_s.clone()
    loss(fs.detach(), ft, index)
    assert torch.equal(loss.memory_s, snap)
    with pytest.raises(ConfigError, match="out of range"):
        loss(fs.detach(), ft, torch.tensor([0, 1, 2, 20]))
    with pytest.raises(ConfigError, match="index"):
        loss.forward_inputs(LossInputs(student_features={"s": fs}, teacher_features={"t": ft}))


def test_crd_lazy_heads_via_materialize():
    lazy = CRDLoss("s", "t", n_data=10, feat_dim=4, n_negatives=5)
    assert list(lazy.parameters()) == []
    inp = LossInputs(
        student_features={"s": torch.randn(3, 6)}, teacher_features={"t": torch.randn(3, 2, 5)},
        index=torch.tensor([0, 1, 2]),
    )
    lazy.materialize(inp)
    assert lazy.embed_s.in_features == 6 and lazy.embed_t.in_features == 10
    assert len(list(lazy.parameters())) == 4
    assert torch.isfinite(lazy.forward_inputs(inp))


# ----------------------------------------------------------------------------------- adapters
@pytest.mark.parametrize(
    ("s_shape", "t_shape"),
    [
        ((2, 16, 8, 8), (2, 32, 4, 4)),  # ResNet-ish teacher map smaller: pool down
        ((2, 16, 4, 4), (2, 32, 8, 8)),  # upsample
        ((2, 16, 8, 8), (2, 16, 8, 8)),
        ((2, 24), (2, 64)),
        ((2, 5, 24), (2, 5, 64)),
    ],
)
def test_projector_maps_shapes(s_shape, t_shape):
    proj = make_projector(s_shape, t_shape)
    out = proj(torch.randn(*s_shape))
    assert tuple(out.shape) == t_shape
    assert tuple(proj(torch.randn(3, *s_shape[1:])).shape) == (3, *t_shape[1:])  # batch is free


def test_projector_kinds_and_errors():
    conv = make_projector((2, 16, 8, 8), (2, 32, 4, 4))
    assert any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in conv.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in conv.modules())
    assert isinstance(make_projector((2, 24), (2, 64)), nn.Linear)
    with pytest.raises(ConfigError, match="ranks"):
        make_projector((2, 16, 4, 4), (2, 64))
    with pytest.raises(ConfigError, match="tokens"):
        make_projector((2, 5, 24), (2, 7, 24))
    with pytest.raises(ConfigError, match="2-D"):
        make_projector((2,), (2,))


# ------------------------------------------------------------------------------ build_losses
def test_build_losses_combines_weighted_terms():
    combo = build_losses([{"name": "soft_kd", "weight": 0.9, "temperature": 4}, {"name": "ce", "weight": 0.1}])
    assert isinstance(combo, CombinedLoss)
    assert combo.needs == {"logits", "targets"}
    inp = LossInputs(student_logits=_t(S), teacher_logits=_t(T), targets=torch.tensor(Y))
    total, terms = combo(inp)
    kd, ce = soft_kd_loss(_t(S), _t(T), 4.0).item(), ce_loss(_t(S), torch.tensor(Y)).item()
    assert terms["soft_kd"].item() == pytest.approx(kd)
    assert terms["ce"].item() == pytest.approx(ce)
    assert total.item() == pytest.approx(0.9 * kd + 0.1 * ce)


def test_build_losses_feature_terms_and_duplicates():
    combo = build_losses(
        [
            {"name": "fitnet", "student_layer": "l1", "teacher_layer": "t1"},
            {"name": "fitnet", "student_layer": "l2", "teacher_layer": "t2", "weight": 0.5},
            {"name": "attention", "student_layer": "l2", "teacher_layer": "t2", "weight": 1000},
        ]
    )
    assert list(combo.terms) == ["fitnet", "fitnet_2", "attention"]
    assert combo.feature_layers() == (("l1", "l2"), ("t1", "t2"))
    assert combo.needs == {"features"}
    inp = LossInputs(
        student_features={"l1": torch.randn(2, 8), "l2": torch.randn(2, 4, 6, 6)},
        teacher_features={"t1": torch.randn(2, 16), "t2": torch.randn(2, 8, 3, 3)},
    )
    combo.materialize(inp)
    n_params = len(list(combo.parameters()))
    assert n_params > 0
    total, terms = combo(inp)
    assert total.item() == pytest.approx(
        terms["fitnet"].item() + 0.5 * terms["fitnet_2"].item() + 1000 * terms["attention"].item(), rel=1e-5
    )
    assert len(list(combo.parameters())) == n_params  # forward creates nothing new


def test_build_losses_errors():
    with pytest.raises(UnknownNameError, match="did you mean: soft_kd"):
        build_losses([{"name": "soft_kdd"}])
    with pytest.raises(ConfigError, match=r"soft_kd.*'temprature'.*did you mean: temperature"):
        build_losses([{"name": "soft_kd", "temprature": 4}])
    with pytest.raises(ConfigError, match="ce.*weight"):
        build_losses([{"name": "soft_kd"}, {"name": "ce", "weight": -0.1}])
    with pytest.raises(ConfigError, match="every weight is 0"):
        build_losses([{"name": "soft_kd", "weight": 0}, {"name": "ce", "weight": 0.0}])
    with pytest.raises(ConfigError, match="empty"):
        build_losses([])
    with pytest.raises(ConfigError, match=r"soft_kd.*temperature must be > 0"):
        build_losses([{"name": "soft_kd", "temperature": 0}])
    with pytest.raises(ConfigError, match=r"fitnet.*missing required key.*student_layer"):
        build_losses([{"name": "fitnet"}])
    with pytest.raises(ConfigError, match="name"):
        build_losses([{"weight": 1.0}])
    with pytest.raises(ConfigError, match="list"):
        build_losses({"name": "ce"})


# -- embedding (Reimers & Gurevych 2020) ---------------------------------------------------------------
def test_embedding_loss_mse_and_cosine_by_hand():
    from condense.distill.losses import EmbeddingLoss, embedding_loss

    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # mse: ((1-0)^2 + (0-1)^2 + 0 + (2-1)^2) / 4 = 0.75
    assert embedding_loss(s, t, "mse").item() == pytest.approx(0.75)
    # cosine: row 0 orthogonal (1 - 0), row 1 parallel (1 - 1): mean 0.5
    assert embedding_loss(s, t, "cosine").item() == pytest.approx(0.5)
    loss = EmbeddingLoss(kind="cosine")
    assert loss.forward_inputs(LossInputs(student_logits=s, teacher_logits=t)).item() == pytest.approx(0.5)
    assert loss.projector is None and not EmbeddingLoss.compares_classes


def test_embedding_loss_projects_a_narrower_student_and_trains_the_projection():
    from condense.distill.losses import EmbeddingLoss

    loss = EmbeddingLoss(kind="mse")
    inp = LossInputs(student_logits=torch.randn(4, 3), teacher_logits=torch.randn(4, 5))
    loss.materialize(inp)
    assert isinstance(loss.projector, nn.Linear) and loss.projector.weight.shape == (5, 3)
    value = loss.forward_inputs(inp)
    value.backward()
    assert loss.projector.weight.grad is not None
    with pytest.raises(ConfigError, match="does not match the teacher's"):
        EmbeddingLoss(adapter="none")(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ConfigError, match="embedding.kind"):
        EmbeddingLoss(kind="l1")
    assert "embedding" in LOSSES.names()
