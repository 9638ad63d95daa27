"""The `tune` stage kind's record (`condense.core.method`)."""
from __future__ import annotations

from condense.core.errors import ConfigError
from condense.core.method import METHODS, Job, Method, Outcome, jsonable
from condense.train.distributed import world
from condense.tune import TuneConfig, tune


def apply_tune(job: Job) -> Outcome:
    """Search compression settings for the job's model under an accuracy / latency objective."""
    if world().distributed:
        raise ConfigError(f"{job.where}: tune times every trial's latency, which processes running side by side "
                          "would distort; run it without torchrun")
    cfg = job.config.replace(train={**job.config.train.to_dict(), **job.train_section}) if job.train_section \
        else job.config
    result = tune(job.input(), job.splits, cfg)
    return Outcome(result.model, info={"tune": jsonable(result.to_dict())}, notes=[result.message])


METHODS.register("tune", Method(family="tune", parse=TuneConfig.from_dict, apply=apply_tune, trains=True, deploys="auto", cli="tune",
                                help="search pruning / quantization settings against an accuracy-latency objective"))
