"""Distillation settings: which losses, how teachers combine, caching, views."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.data.augment import AugmentConfig
from condense.train.config import TrainConfig

#: What distillation trains with where `train` does not say (the Python API, `condense distill`
#: and recipe stages alike), on top of `TrainConfig`'s defaults (whose length is 10 epochs, at
#: least `min_steps` optimizer steps). Measured on digits in benchmarks/distill_defaults.py
#: (docs/distillation.md, "Default settings"; docs/training.md, "Default length").
DISTILL_TRAIN: dict[str, Any] = {"lr": 3e-3, "warmup_steps": 20}


@dataclasses.dataclass
class DistillConfig(Config):
    """How a student learns from one or more frozen teachers.

    Either give `losses` explicitly (a list of `{"name", "weight", **hyper-parameters}`, see
    `condense.distill.losses.LOSSES`), or leave it empty and set `alpha` and `temperature`:
    the classic Hinton mix `alpha * soft_kd(T) + (1 - alpha) * ce` (alpha = 1: label-free).
    `hard: true` uses the teacher's argmax instead of its soft targets.

    Multi-teacher (`teacher_mix`): "mean" averages the teachers' softened probabilities,
    "weighted" uses `teacher_weights`, "confidence" weights each teacher per sample by
    softmax(-entropy) of its prediction (confident teachers count more). Feature losses read
    the teacher numbered `feature_teacher`.

    `cache`: "auto" computes teacher outputs once and reuses them when the inputs the teacher
    sees are fixed (no augmentation, no mixup); "on" insists (error if impossible); "off" never.
    `augment` + `mixup` give consistent-view distillation ("function matching", Beyer et al.
    2022): teacher and student see the same augmented (optionally mixed-up) view.

    Why alpha 0.5 by default, not Hinton's 0.9 (issue 27): with T^2 on the soft term, alpha 0.9
    at T 4 is 14.4 against 0.1, so the labels carry 0.7 % of the loss and the student copies its
    teacher, mistakes included; at 0.5 (8 against 0.5) the labels keep a say. Measured on MNIST
    (benchmarks/protocols/hinton_mnist.py's teacher, 784-1200-1200-10, 125 test errors; Hinton's
    784-800-800-10 student; `TrainConfig()` alone 133 test errors on seed 0): alpha 0.9 left the
    student at 148 at lr 3e-3 and 138 at 1e-3, alpha 0.5 at 124 (3e-3), 129 (2e-3), 113 (1e-3);
    seed 1, alpha 0.5 at 3e-3: 127 against 131 alone. On 377 labelled digits (5 seeds,
    benchmarks/distill_defaults.py --small 377's setting, alone 95.21 %): alpha 0.5 96.49 % at
    3e-3, 95.60 % at 1e-3; alpha 0.9 96.66 % at 3e-3.
    Alpha 0.5 at lr 3e-3 beats the student alone on both by a margin (lr 1e-3 wins more on MNIST
    but only by 0.4 points on the digits, 4 wins / 1 loss); docs/distillation.md, "Default settings".

    `train` defaults to `TrainConfig` with `DISTILL_TRAIN` on top (lr 3e-3 after a 20-step linear
    warm-up, for `TrainConfig`'s default length: 10 epochs, at least 500 optimizer steps); a
    partial `train` mapping (a recipe's, the CLI's) fills in the rest
    from there; a `TrainConfig` object is used as given. Why the higher learning rate: the soft
    term reads the student's logits only through `s / T`, and AdamW's step does not grow with
    the loss (Hinton's T^2, which restores the gradient scale under SGD, cancels in Adam's
    normalised update), so at T = 4 the student's softened outputs move about 4x less per step
    than under cross-entropy at the same lr; with TrainConfig's lr 1e-3 and 10 epochs the
    student underfitted. Why long runs: soft targets keep teaching after the labels are fitted
    (the "patient teacher" of Beyer et al. 2022); on digits the student alone gained nothing
    from 10 to 20 epochs and the distilled one did (docs/distillation.md, "Default settings").
    Issue 23's 20 epochs became the step floor of issue 27: 20 epochs of 377 images were 100
    optimizer steps (docs/training.md, "Default length").
    """

    losses: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    alpha: float = 0.5
    temperature: float = 4.0
    hard: bool = False
    teacher_mix: Literal["mean", "weighted", "confidence"] = "mean"
    teacher_weights: list[float] | None = None
    feature_teacher: int = 0
    cache: Literal["auto", "on", "off"] = "auto"
    cache_dir: str | None = None
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    mixup: float = 0.0  # Beta(mixup, mixup) mixing coefficient; 0 = off
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(**DISTILL_TRAIN))

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):  # a partial mapping overrides distillation's defaults only
            self.train = {**DISTILL_TRAIN, **self.train}
        super().__post_init__()

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"DistillConfig.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"DistillConfig.temperature must be > 0, got {self.temperature}")
        if self.mixup < 0:
            raise ConfigError(f"DistillConfig.mixup must be >= 0, got {self.mixup}")
        if self.teacher_mix == "weighted" and not self.teacher_weights:
            raise ConfigError("DistillConfig.teacher_weights is required when teacher_mix='weighted'")
        if self.teacher_weights is not None and (any(w < 0 for w in self.teacher_weights) or sum(self.teacher_weights) <= 0):
            raise ConfigError(f"DistillConfig.teacher_weights must be >= 0 with a positive sum, got {self.teacher_weights}")
        if self.feature_teacher < 0:
            raise ConfigError(f"DistillConfig.feature_teacher must be >= 0, got {self.feature_teacher}")
        if self.losses:  # build them once now: a misspelt name or key fails here (recipe validation), not mid-run
            # lazy: the losses need torch, which this config module keeps out of `condense --help`
            from condense.distill.losses import build_losses

            try:
                build_losses(self.losses)
            except ConfigError as e:
                msg = str(e)
                raise ConfigError(f"DistillConfig.{msg}" if msg.startswith("losses[") else f"DistillConfig.losses: {msg}") from None

    def loss_specs(self) -> list[dict[str, Any]]:
        """The loss list this config means (explicit `losses`, else the alpha / temperature mix)."""
        if self.losses:
            return [dict(s) for s in self.losses]
        kd = {"name": "hard_kd"} if self.hard else {"name": "soft_kd", "temperature": self.temperature}
        specs = [{**kd, "weight": self.alpha}]
        if self.alpha < 1.0:
            specs.append({"name": "ce", "weight": 1.0 - self.alpha})
        return [s for s in specs if s["weight"] > 0]

    @property
    def views_vary(self) -> bool:
        """True when the teacher's input changes between epochs (augmentation or mixup)."""
        a = self.augment
        return bool(a.shift or a.hflip or a.noise or self.mixup)
