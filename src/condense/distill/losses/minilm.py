"""MiniLM deep self-attention distillation (Wang et al. 2020, 2021).

W. Wang, F. Wei, L. Dong, H. Bao, N. Yang, M. Zhou, "MiniLM: Deep Self-Attention Distillation for
Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020, arXiv:2002.10957, eq. 5-8:

    L = L_AT + L_VR
    L_AT = 1/(A_h |x|) sum_a sum_t KL(A^T_{a,t} || A^S_{a,t}),  A_a = softmax(Q_a K_a^T / sqrt(d_k))
    L_VR = 1/(A_h |x|) sum_a sum_t KL(VR^T_{a,t} || VR^S_{a,t}), VR_a = softmax(V_a V_a^T / sqrt(d_k))

on the *last* transformer layer of teacher and student, per attention head a and query token t.
It needs no width match (the relations are T x T), but v1 compares head a with head a, so
teacher and student must have the same number of heads.

W. Wang, H. Bao, S. Huang, L. Dong, F. Wei, "MiniLMv2: Multi-Head Self-Attention Relation
Distillation for Compressing Pretrained Transformers", Findings of ACL 2021, arXiv:2012.15828:
the queries (keys, values) of all heads are concatenated and re-split into `relation_heads`
relation heads of the same count on both sides, so the head counts may differ; it distils the
Q-Q, K-K and V-V self-relations (`relations: [query, key, value]`) and may take an upper-middle
teacher layer (`teacher_layer`).

Here: `relations` lists any of "attention" (Q-K, v1's A), "value" (V-V), "query" (Q-Q),
"key" (K-K); the loss is the sum of their KLs. `relation_heads: null` splits each model by its
own heads (v1; the counts must match); an integer re-splits both (v2). Each relation is scaled
by `1/sqrt(d)` with `d` that model's per-(relation-)head width, as BERT scales its attention.

How Q, K, V are obtained: the outputs of the chosen layer's own `attention.self.query / key /
value` Linear modules are tapped by name (`FeatureTap`), and the relations are recomputed from
them. This is exact (the attention logits BERT computes are these products, plus the padding
mask), works with any attention implementation (eager or sdpa, which returns no weights) and
changes no model code; the attention dropout is not applied (the clean distributions are
distilled, as in the paper). Padding: masked key columns get probability 0 in both models, and
only real query rows are averaged (each real row of the batch counts once).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError, did_you_mean
from condense.distill.layers import self_attention
from condense.distill.losses.base import (
    DistillLoss,
    LossInputs,
    check_positive_int,
    crop_tokens,
    token_mask,
)

#: relation name -> (left, right) projections whose scaled dot products make the relation
RELATIONS: dict[str, tuple[str, str]] = {
    "attention": ("query", "key"), "value": ("value", "value"), "query": ("query", "query"), "key": ("key", "key"),
}
_NEG = -1e9  # added to masked key logits: exp underflows to exactly 0 in float32


def relation_log_probs(left: Tensor, right: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """`log softmax(l_h r_h^T / sqrt(d))` per head: `(B, T, D)` twice -> `(B, heads, T, T)`.

    `D` is split into `heads` slices of `d = D / heads` (BERT's head layout); key columns whose
    `mask` is 0 get probability 0.
    """
    b, t, width = left.shape
    if width % heads:
        raise ConfigError(f"minilm: width {width} does not split into {heads} heads")
    d = width // heads
    lh = left.float().reshape(b, t, heads, d).transpose(1, 2)
    rh = right.float().reshape(b, right.shape[1], heads, d).transpose(1, 2)
    logits = lh @ rh.transpose(-1, -2) / math.sqrt(d)
    m = token_mask(mask, b, t, left.device)
    logits = logits + (1.0 - m)[:, None, None, :] * _NEG
    return F.log_softmax(logits, dim=-1)


def relation_kl(
    student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], student_heads: int, teacher_heads: int,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean over heads and real query rows of `KL(teacher row || student row)`.

    Each side's relation is `relation_log_probs(left, right, heads, mask)`; both must give the
    same number of heads.
    """
    if student_heads != teacher_heads:
        raise ConfigError(f"minilm: the student gives {student_heads} relation heads and the teacher "
                          f"{teacher_heads}; they must match")
    length = student[0].shape[1]
    t_left, t_right = (crop_tokens(x, length) for x in teacher)
    log_s = relation_log_probs(*student, student_heads, mask)
    log_t = relation_log_probs(t_left, t_right, teacher_heads, mask)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)  # (B, H, T)
    rows = token_mask(mask, kl.shape[0], length, kl.device)[:, None, :]
    return (kl * rows).sum() / (rows.sum() * kl.shape[1]).clamp_min(1.0)


def minilm_loss(
    student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], student_heads: int, teacher_heads: int,
    mask: Tensor | None = None, relations: Sequence[str] = ("attention", "value"),
) -> Tensor:
    """Sum over `relations` of `relation_kl`; `student` / `teacher` map "query" / "key" / "value"
    to that layer's projections `(B, T, D)`."""
    total: Tensor | None = None
    for rel in relations:
        left, right = RELATIONS[rel]
        value = relation_kl((student[left], student[right]), (teacher[left], teacher[right]),
                            student_heads, teacher_heads, mask)
        total = value if total is None else total + value
    if total is None:
        raise ConfigError("minilm: relations is empty")
    return total


class MiniLMLoss(DistillLoss):
    """MiniLM self-attention (+ value) relation distillation on one layer of each model."""

    needs: ClassVar[frozenset[str]] = frozenset({"features"})
    compares_classes: ClassVar[bool] = False

    def __init__(
        self,
        relations: list[str] | tuple[str, ...] = ("attention", "value"),
        relation_heads: int | None = None,
        student_layer: int = -1,
        teacher_layer: int = -1,
    ) -> None:
        super().__init__()
        if isinstance(relations, str) or not isinstance(relations, Sequence) or not relations:
            raise ConfigError(f"minilm.relations must be a non-empty list of {', '.join(RELATIONS)}, got {relations!r}")
        for r in relations:
            if r not in RELATIONS:
                raise ConfigError(f"minilm.relations: unknown relation {r!r} (one of {', '.join(RELATIONS)})"
                                  f"{did_you_mean(str(r), list(RELATIONS))}")
        if len(set(relations)) != len(relations):
            raise ConfigError(f"minilm.relations lists a relation twice: {list(relations)}")
        self.relations = tuple(relations)
        self.relation_heads = None if relation_heads is None else check_positive_int(relation_heads, "minilm.relation_heads")
        for what, v in (("student_layer", student_layer), ("teacher_layer", teacher_layer)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"minilm.{what} must be a layer index (negative counts from the end), got {v!r}")
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self._parts = tuple(dict.fromkeys(p for r in self.relations for p in RELATIONS[r]))
        self._names: tuple[dict[str, str], dict[str, str]] | None = None
        self.heads: tuple[int, int] = (0, 0)  # (student, teacher) heads the relations are split into

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        sides = []
        for what, model, idx in (("student", student, self.student_layer), ("teacher", teacher, self.teacher_layer)):
            try:
                sides.append(self_attention(model, idx, what))
            except ConfigError as e:
                raise ConfigError(f"minilm.{what}_layer: {e}") from None
        s, t = sides
        if self.relation_heads is None:
            if s.heads != t.heads:
                raise ConfigError(
                    f"minilm: the teacher's layer {t.block} has {t.heads} attention heads and the student's layer "
                    f"{s.block} has {s.heads}; MiniLM v1 compares head by head and needs the same count. "
                    f"Set relation_heads (MiniLM v2: both models' heads are re-split into that many relation heads"
                    f"{_suggest(s.width, t.width, (t.heads, s.heads))})"
                )
            heads = (s.heads, t.heads)
        else:
            for what, side in (("student", s), ("teacher", t)):
                if side.width % self.relation_heads:
                    raise ConfigError(f"minilm.relation_heads={self.relation_heads} does not divide the {what}'s "
                                      f"attention width {side.width} (layer {side.block})")
            heads = (self.relation_heads, self.relation_heads)
        self.heads = heads
        self._names = ({p: s.name(p) for p in self._parts}, {p: t.name(p) for p in self._parts})

    def feature_layers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if self._names is None:
            raise ConfigError("minilm: the layers are not resolved yet; call bind(student, teacher) first "
                              "(condense.distill does)")
        return tuple(self._names[0].values()), tuple(self._names[1].values())

    def _projections(self, inp: LossInputs) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        self.feature_layers()  # bound?
        assert self._names is not None
        out: tuple[dict[str, Tensor], dict[str, Tensor]] = ({}, {})
        for side, feats, names, dest in (("student", inp.student_features, self._names[0], out[0]),
                                         ("teacher", inp.teacher_features, self._names[1], out[1])):
            for part, name in names.items():
                if name not in feats:
                    have = ", ".join(sorted(feats)) or "none"
                    raise ConfigError(f"minilm: no {side} feature {name!r} in this batch (have: {have})")
                dest[part] = feats[name]
        return out

    def forward(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        if self.heads == (0, 0):
            raise ConfigError("minilm: call bind(student, teacher) first (it reads the head counts)")
        return minilm_loss(student, teacher, self.heads[0], self.heads[1], mask, self.relations)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        s, t = self._projections(inp)
        return self(s, t, inp.mask)

    def extra_repr(self) -> str:
        return (f"relations={list(self.relations)}, relation_heads={self.relation_heads}, "
                f"student_layer={self.student_layer}, teacher_layer={self.teacher_layer}")


def _suggest(a: int, b: int, candidates: tuple[int, ...]) -> str:
    """", e.g. relation_heads: k" for the first candidate dividing both widths, else ""."""
    for k in candidates:
        if a % k == 0 and b % k == 0:
            return f", e.g. relation_heads: {k}"
    return ""
