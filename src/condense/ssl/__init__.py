"""Self-supervised learning: pretrain students without labels, and distill embeddings without labels.

    model = condense.ssl.pretrain(model, splits.unlabelled, PretrainConfig(method="simclr"))
    student = condense.ssl.ssl_distill(student, teacher, splits.unlabelled, SSLDistillConfig())

Methods (`PretrainConfig.method`, registry `METHODS` in `tasks.py`): "simclr", "byol", "mae".
Both verbs run through the one `fit()` loop as tasks; losses live one per file in
`condense.ssl.losses`; multi-view augmentations in `views.py`; heads in `heads.py`; the EMA target
of BYOL is a callback (`callbacks.py`). Nothing here reads a label.
"""
from __future__ import annotations

from condense.ssl.api import (
    as_unlabelled,
    build_pretrain_task,
    pretrain,
    pretrain_fit,
    ssl_distill,
    ssl_distill_fit,
)
from condense.ssl.callbacks import EMATarget, ema_momentum, ema_update
from condense.ssl.config import PretrainConfig, SSLDistillConfig
from condense.ssl.heads import MLPHead, PixelDecoder
from condense.ssl.probe import embed_dataset, knn_accuracy
from condense.ssl.tasks import METHODS, BYOLTask, MAETask, SimCLRTask, SSLDistillTask, SSLTask
from condense.ssl.views import ViewConfig, Views, build_views

__all__ = [
    "METHODS",
    "BYOLTask",
    "EMATarget",
    "MAETask",
    "MLPHead",
    "PixelDecoder",
    "PretrainConfig",
    "SSLDistillConfig",
    "SSLDistillTask",
    "SSLTask",
    "SimCLRTask",
    "ViewConfig",
    "Views",
    "as_unlabelled",
    "build_pretrain_task",
    "build_views",
    "ema_momentum",
    "ema_update",
    "embed_dataset",
    "knn_accuracy",
    "pretrain",
    "pretrain_fit",
    "ssl_distill",
    "ssl_distill_fit",
]
