"""The `evaluate` stage kind's record (`condense.core.method`)."""
from __future__ import annotations

import dataclasses

from condense.core.config import Config
from condense.core.method import METHODS, Job, Method, Outcome


@dataclasses.dataclass
class EmptyConfig(Config):
    """A stage kind with no options."""


def apply_evaluate(job: Job) -> Outcome:
    """Measure a model as it is: the input stage's, or one built from `model:` (e.g. `hf:<folder>`,
    a pretrained teacher that later stages compress)."""
    return Outcome(job.input())


METHODS.register("evaluate", Method(family="evaluate", parse=EmptyConfig.from_dict, apply=apply_evaluate,
                                    takes_model=True, cli="eval",
                                    help="measure a model as it is"))
