"""The `distill` stage kind's record (`condense.core.method`), and the label-free transfer set
that distillation and every distillation recovery share."""
from __future__ import annotations

from typing import Any

from condense.core.errors import ConfigError
from condense.core.method import METHODS, Job, Method, Outcome
from condense.data.base import Splits
from condense.data.transfer import all_training_images
from condense.distill.api import distill_fit
from condense.distill.config import DISTILL_TRAIN, DistillConfig
from condense.distill.defaults import teacher_defaults
from condense.distill.losses import build_losses


def label_free_transfer(splits: Splits, config: DistillConfig, what: str = "distillation") -> tuple[Any, list[str]]:
    """All training images (labelled + unlabelled, labels dropped) when the distillation `config`
    needs no labels and the data has an unlabelled part; else `(None, [])`."""
    if splits.unlabelled is None or "targets" in build_losses(config.loss_specs()).needs:
        return None, []
    transfer = all_training_images(splits)
    return transfer, [f"label-free {what}: the transfer set is all {len(transfer)} training images "
                      f"({len(splits.train)} labelled + {len(splits.unlabelled)} unlabelled)"]


def recovery_transfer(job: Job) -> tuple[Any, list[str]]:
    """What a structural method's distillation recovery trains on: all training images when it
    needs no labels (`label_free_transfer`); `(None, [])` for any other recovery."""
    if job.recover is None or job.recover.method != "distill":
        return None, []
    return label_free_transfer(job.splits, job.recover.distill_config(job.input()), "recovery")


def apply_distill(job: Job) -> Outcome:
    """Distil the job's teachers into its model (`distill_fit`), with distillation's training
    defaults under the stage's `train:` (as `condense distill`)."""
    if not job.teachers:
        raise ConfigError(f"{job.where}: a distill stage needs 'teacher: <stage name>'")
    student = job.input()
    defaults = {**DISTILL_TRAIN, **teacher_defaults({}, job.teachers[0]).get("train", {})}
    dc = job.config.replace(train=job.train(defaults).to_dict())
    transfer, notes = label_free_transfer(job.splits, dc)
    res = distill_fit(student, job.teachers, job.splits.train if transfer is None else transfer, dc, job.splits.val,
                      resume=job.resume)
    return Outcome(res.model, info={"fit": res.to_dict(), "distill_config": dc.to_dict()}, notes=notes)


METHODS.register("distill", Method(family="distill", parse=DistillConfig.from_dict, apply=apply_distill, trains=True,
                                   takes_model=True, cli="distill",
                                   help="distil one or more teachers into the model (soft targets, features, ...)"))
