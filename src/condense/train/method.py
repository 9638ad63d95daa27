"""The `train` and `finetune` stage kinds' records (`condense.core.method`)."""
from __future__ import annotations

import dataclasses

from condense.core.config import Config
from condense.core.method import METHODS, Job, Method, Outcome
from condense.data.augment import AugmentConfig, build_augment
from condense.train.fit import train_model


@dataclasses.dataclass
class TrainStageConfig(Config):
    """`train` / `finetune` stage options besides the TrainConfig under `train:`."""

    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


def apply_train(job: Job) -> Outcome:
    """Train the job's model on the labelled split (`train_model`, the stage's `train:`)."""
    tc = job.train(None)
    res = train_model(job.input(), job.splits.train, tc, job.splits.val, augment=build_augment(job.config.augment),
                      resume=job.resume)
    return Outcome(res.model, info={"fit": res.to_dict(), "train_config": tc.to_dict()})


METHODS.register("train", Method(family="train", parse=TrainStageConfig.from_dict, apply=apply_train, trains=True,
                                 takes_model=True, cli="train", help="train a model on the labelled data"))
METHODS.register("finetune", Method(family="train", parse=TrainStageConfig.from_dict, apply=apply_train, trains=True,
                                    takes_model=True,
                                    help="train an earlier stage's model further"))
