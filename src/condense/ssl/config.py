"""Settings of self-supervised pretraining and self-supervised distillation."""
from __future__ import annotations

import dataclasses
from typing import Literal

from condense.core.config import Config
from condense.core.errors import ConfigError, did_you_mean
from condense.ssl.tasks import METHODS  # the registry of method handlers (task classes)
from condense.ssl.views import ViewConfig
from condense.train.config import TrainConfig


def _ssl_train() -> TrainConfig:
    # no labels -> no validation accuracy to select on: keep the last weights; drop a ragged last
    # batch (a batch of one breaks BatchNorm and has no negatives)
    return TrainConfig(epochs=50, batch_size=128, lr=2e-3, drop_last=True, select_best="last")


@dataclasses.dataclass
class PretrainConfig(Config):
    """Self-supervised pretraining of an encoder on unlabelled data (`condense.ssl.pretrain`).

    method: "simclr" (NT-Xent between two views), "byol" (predict an EMA target's projection of
      the other view) or "mae" (reconstruct masked patches with a small decoder).
    layer: the module whose output is the embedding (default "flatten": the classifier's input).
    projection_dim / hidden_dim: sizes of the projection (and BYOL prediction) MLP heads; for
      "mae", hidden_dim is the decoder's hidden width.
    temperature: NT-Xent temperature (simclr).
    ema_momentum / ema_schedule: BYOL's target momentum, constant or cosine-annealed to 1.
    mask_ratio / mask_patch: fraction of `mask_patch x mask_patch` patches hidden (mae).
    views: the random augmentation each view draws (see `ViewConfig`).
    train: the `fit()` settings (optimizer, schedule, length, seed, checkpoints).
    """

    method: str = "simclr"
    layer: str = "flatten"
    projection_dim: int = 64
    hidden_dim: int = 128
    temperature: float = 0.2
    ema_momentum: float = 0.99
    ema_schedule: Literal["cosine", "constant"] = "cosine"
    mask_ratio: float = 0.5
    mask_patch: int = 2
    views: ViewConfig = dataclasses.field(default_factory=ViewConfig)
    train: TrainConfig = dataclasses.field(default_factory=_ssl_train)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"PretrainConfig.method: unknown method {self.method!r}{did_you_mean(self.method, METHODS.names())}; "
                f"known: {', '.join(METHODS.names())}"
            )
        if not self.layer:
            raise ConfigError("PretrainConfig.layer must name a module (e.g. 'flatten')")
        if self.projection_dim < 1 or self.hidden_dim < 1:
            raise ConfigError(
                f"PretrainConfig.projection_dim and hidden_dim must be >= 1, got {self.projection_dim}, {self.hidden_dim}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"PretrainConfig.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ConfigError(f"PretrainConfig.ema_momentum must be in [0, 1], got {self.ema_momentum}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"PretrainConfig.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.mask_patch < 1:
            raise ConfigError(f"PretrainConfig.mask_patch must be >= 1, got {self.mask_patch}")


@dataclasses.dataclass
class SSLDistillConfig(Config):
    """Label-free distillation of a teacher's embedding into a student (`condense.ssl.ssl_distill`).

    The student's embedding (output of `student_layer`) goes through an adapter to the teacher's
    width (`teacher_layer`), then
    `embed_weight * embed-loss(adapter(s), t) + seed_weight * SEED(adapter(s), t; queue)`.
    embed: "cosine" (1 - cos) or "mse".
    queue_size / student_temperature / teacher_temperature: SEED's FIFO queue of teacher
      embeddings and its two temperatures.
    views: teacher and student see the same random view (set every field to 0 for none).
    """

    embed: Literal["cosine", "mse"] = "cosine"
    embed_weight: float = 1.0
    seed_weight: float = 1.0
    queue_size: int = 512
    student_temperature: float = 0.2
    teacher_temperature: float = 0.05
    student_layer: str = "flatten"
    teacher_layer: str = "flatten"
    views: ViewConfig = dataclasses.field(default_factory=ViewConfig)
    train: TrainConfig = dataclasses.field(default_factory=_ssl_train)

    def validate(self) -> None:
        if self.embed_weight < 0 or self.seed_weight < 0:
            raise ConfigError(f"SSLDistillConfig: weights must be >= 0, got embed {self.embed_weight}, seed {self.seed_weight}")
        if self.embed_weight == 0 and self.seed_weight == 0:
            raise ConfigError("SSLDistillConfig: embed_weight and seed_weight are both 0; nothing to learn")
        if self.queue_size < 1:
            raise ConfigError(f"SSLDistillConfig.queue_size must be >= 1, got {self.queue_size}")
        if self.student_temperature <= 0 or self.teacher_temperature <= 0:
            raise ConfigError("SSLDistillConfig: student_temperature and teacher_temperature must be > 0")
        if not self.student_layer or not self.teacher_layer:
            raise ConfigError("SSLDistillConfig: student_layer and teacher_layer must name modules")
