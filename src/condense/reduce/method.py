"""The `reduce-data` stage kind's record (`condense.core.method`)."""
from __future__ import annotations

from typing import Any

from condense.core.config import Config
from condense.core.method import METHODS, Job, Method, Outcome, jsonable
from condense.reduce import reduce_data, resolve_config
from condense.train.distributed import is_main


def apply_reduce(job: Job) -> Outcome:
    """Reduce the data the later stages see: PCA / feature selection of inputs, or a coreset of the
    training split (on the input model's embeddings when the stage has `from:`)."""
    result = reduce_data(job.splits, job.config, model=job.model)
    info = {"method": result.method, **jsonable(result.info)}
    if result.positions is not None:
        info["positions"] = [int(p) for p in result.positions]
    # every torchrun process applies the reduction; rank 0 writes its file
    if result.transform is not None and hasattr(result.transform, "save") and is_main():
        result.transform.save(job.folder / "transform.json")
    return Outcome(job.model, info=info, splits=result.data)


def _parse(raw: dict[str, Any]) -> Config:
    return resolve_config(raw)[1]


METHODS.register("reduce-data", Method(family="reduce", parse=_parse, apply=apply_reduce, needs_input=False,
                                       measured=False, cli="reduce",
                                       help="PCA, feature selection or a coreset of the data the later stages see"))
