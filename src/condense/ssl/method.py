"""The `pretrain` stage kind's record (`condense.core.method`)."""
from __future__ import annotations

from condense.core.method import METHODS, Job, Method, Outcome
from condense.data.transfer import all_training_images
from condense.ssl.api import pretrain_fit
from condense.ssl.config import PretrainConfig


def apply_pretrain(job: Job) -> Outcome:
    """Self-supervised pretraining of the job's model on every training image, labels dropped."""
    pc = job.config.replace(train=job.train(None).to_dict())
    res = pretrain_fit(job.input(), all_training_images(job.splits), pc, resume=job.resume)
    return Outcome(res.model, info={"fit": res.to_dict(), "pretrain_config": pc.to_dict()},
                   notes=["self-supervised pretraining trains the encoder only; the classifier is untrained "
                          "until a finetune stage, so this stage's accuracy is not meaningful"])


METHODS.register("pretrain", Method(family="ssl", parse=PretrainConfig.from_dict, apply=apply_pretrain, trains=True,
                                    takes_model=True, cli="pretrain",
                                    help="self-supervised pretraining (SimCLR, BYOL, MAE) on unlabelled images"))
