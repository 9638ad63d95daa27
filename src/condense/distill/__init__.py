"""Knowledge distillation: a teacher (or several) teaches a student through the one `fit()` loop.

    student = condense.distill(student, teacher, splits.train, DistillConfig(alpha=0.9, temperature=4))

Losses live one per file in `condense.distill.losses`; the task in `task.py`; the teacher-output
cache in `cache.py`.
"""
from __future__ import annotations

from condense.distill.api import born_again, build_task, distill, distill_fit
from condense.distill.cache import TeacherCache
from condense.distill.config import DistillConfig
from condense.distill.defaults import is_encoder, teacher_defaults
from condense.distill.losses import LOSSES
from condense.distill.task import DistillTask, combine_teachers


def __getattr__(name: str):
    """Data-free distillation lives in its own module (imported on first use)."""
    if name in ("DataFreeConfig", "datafree_distill", "synthesize"):
        # lazy: imported on first use, like the package root's verbs
        from condense.distill import datafree

        return getattr(datafree, name)
    raise AttributeError(f"module 'condense.distill' has no attribute {name!r}")


__all__ = [
    "is_encoder",
    "teacher_defaults",
    "DataFreeConfig",
    "datafree_distill",
    "synthesize",
    "LOSSES",
    "DistillConfig",
    "DistillTask",
    "TeacherCache",
    "born_again",
    "build_task",
    "combine_teachers",
    "distill",
    "distill_fit",
]
