"""The shared call convention of every distillation loss: `LossInputs` and `DistillLoss`.

A distillation task runs the student (and the frozen teachers), fills one `LossInputs`, and
hands it to each loss's `forward_inputs`. A loss declares in `needs` what it reads, so the task
computes only that, and `feature_layers()` names the module outputs it wants tapped. A loss whose
module names follow from the models (a transformer's layers, found by index) resolves them in
`bind(student, teacher)`, which the task calls before it asks for `feature_layers()`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.core.registry import Registry

#: what `DistillLoss.needs` may contain.
#: "logits": reads the teacher's logits (or `teacher_probs`); the student's logits are always there.
#: "features": reads tapped intermediate features (names from `feature_layers()`).
#: "targets": reads ground-truth labels.  "index": reads each sample's dataset index.
NEEDS = frozenset({"logits", "features", "targets", "index"})


@dataclass
class LossInputs:
    """Everything a distillation loss may read for one batch.

    `student_logits` and `teacher_logits` are `(B, C)` (or `(B, ..., C)`, flattened to rows by
    the logit losses). `teacher_probs`, when set, is a ready-made soft target distribution (e.g.
    the average of several teachers' `softmax(t / T)`, see `average_teacher_probs`) and replaces
    the teacher logits for `soft_kd` / `hard_kd`. Feature dicts are keyed by module name as
    captured by `FeatureTap`. `index` holds the dataset index of each sample (CRD's memory bank).
    `mask` is the batch's `attention_mask` `(B, T)` (1 = real token, 0 = padding) when the batch
    has one (token batches), so per-token losses (`hidden_state`, `minilm`) skip the padding;
    None for image / tabular batches (every position counts).
    """

    student_logits: Tensor | None = None
    teacher_logits: Tensor | None = None
    targets: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None
    teacher_probs: Tensor | None = None
    mask: Tensor | None = None


class DistillLoss(nn.Module):
    """Base of every loss module: `forward_inputs(LossInputs)`, `needs`, `materialize`.

    Subclasses also keep their natural `forward(...)` signature (tensors in, scalar out).
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    #: a loss over teacher and student logits that requires them to predict the same classes
    #: (checked before training); False for losses that regress output vectors (`embedding`).
    compares_classes: ClassVar[bool] = True
    #: the shapes this loss expects, for the error when a first batch does not fit ("" = from `needs`)
    expects: ClassVar[str] = ""

    def forward_inputs(self, inp: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def materialize(self, inp: LossInputs) -> None:
        """Create lazily-shaped parameters (projectors, heads) from one batch. No-op by default.

        Call it (or run one forward) before building the optimizer, else those parameters are
        not trained; call it before loading a checkpoint that holds them.
        """
        return None

    def feature_layers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(student module names, teacher module names) whose outputs this loss reads."""
        return (), ()

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        """Resolve what depends on the models (module names from layer indices, head counts) and
        check it against them, with errors that name the layer. No-op by default; the task calls
        it (with the teacher the feature losses read) before `feature_layers()`. Idempotent.
        """
        return None

    # -- helpers for subclasses -------------------------------------------------------------
    def _loss_name(self) -> str:
        return type(self).__name__

    def _student_logits(self, inp: LossInputs) -> Tensor:
        if inp.student_logits is None:
            raise ConfigError(f"{self._loss_name()}: needs the student's logits, none were given")
        return inp.student_logits

    def _teacher_logits(self, inp: LossInputs) -> Tensor:
        if inp.teacher_logits is None:
            raise ConfigError(f"{self._loss_name()}: needs the teacher's logits, none were given")
        return inp.teacher_logits

    def _targets(self, inp: LossInputs) -> Tensor:
        if inp.targets is None:
            raise ConfigError(
                f"{self._loss_name()}: needs ground-truth targets, but the batch has no labels"
            )
        return inp.targets


class FeatureLoss(DistillLoss):
    """A loss between one student feature and one teacher feature, picked by module name."""

    needs: ClassVar[frozenset[str]] = frozenset({"features"})

    def __init__(self, student_layer: str, teacher_layer: str) -> None:
        super().__init__()
        for what, value in (("student_layer", student_layer), ("teacher_layer", teacher_layer)):
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"{type(self).__name__}.{what} must be a module name (string), got {value!r}"
                )
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer

    def feature_layers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (self.student_layer,), (self.teacher_layer,)

    def _features(self, inp: LossInputs) -> tuple[Tensor, Tensor]:
        out = []
        for side, feats, name in (
            ("student", inp.student_features, self.student_layer),
            ("teacher", inp.teacher_features, self.teacher_layer),
        ):
            if name not in feats:
                have = ", ".join(sorted(feats)) or "none"
                raise ConfigError(
                    f"{self._loss_name()}: no {side} feature {name!r} in this batch (have: {have})"
                )
            out.append(feats[name])
        return out[0], out[1]

    def extra_repr(self) -> str:
        return f"student_layer={self.student_layer!r}, teacher_layer={self.teacher_layer!r}"


# -- hyper-parameter checks (ConfigError naming the field) ----------------------------------
def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_positive(value: object, what: str) -> float:
    v = _number(value, what)
    if v <= 0:
        raise ConfigError(f"{what} must be > 0, got {value!r}")
    return v


def check_nonnegative(value: object, what: str) -> float:
    v = _number(value, what)
    if v < 0:
        raise ConfigError(f"{what} must be >= 0, got {value!r}")
    return v


def check_unit_interval(value: object, what: str, *, closed_right: bool = False) -> float:
    """0 <= value < 1 (or <= 1 with `closed_right`)."""
    v = _number(value, what)
    if v < 0 or (v > 1 if closed_right else v >= 1):
        raise ConfigError(f"{what} must be in [0, {'1]' if closed_right else '1)'}, got {value!r}")
    return v


def check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def rows(logits: Tensor) -> Tensor:
    """`(B, ..., C)` -> `(N, C)` float32+ rows, so logit losses average over every position."""
    x = logits.reshape(-1, logits.shape[-1]) if logits.dim() != 2 else logits
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# -- per-token features (B, T, D) with an attention mask --------------------------------------
def token_mask(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """A float `(B, T)` mask of real tokens: `mask` (any dtype, 1 = real) or all ones when None."""
    if mask is None:
        return torch.ones(batch, length, device=device)
    if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] < length:
        raise ConfigError(f"attention_mask {tuple(mask.shape)} does not fit token features of batch {batch} "
                          f"and length {length}")
    return (mask[:, :length] != 0).to(device=device, dtype=torch.float32)


def crop_tokens(teacher: Tensor, length: int) -> Tensor:
    """`teacher` `(B, T', ...)` cut to the student's `length` tokens when longer: the teacher
    cache zero-pads per-token features to the longest sample it saw, while a training batch is
    padded to its own longest sample (right padding, so the cut positions are padding)."""
    return teacher[:, :length] if teacher.dim() >= 2 and teacher.shape[1] > length else teacher


#: name -> loss class; the losses of this package register themselves in `condense.distill.losses`
#: (its `__init__`), a new loss is one file plus its registration line there.
LOSSES: Registry[type[DistillLoss]] = Registry("distillation loss")
