"""The `factorize` and `reduce-depth` stage kinds' records (`condense.core.method`)."""
from __future__ import annotations

from condense.core.method import METHODS, Job, Method, Outcome, jsonable
from condense.distill.method import recovery_transfer
from condense.lowrank.config import DepthConfig, FactorizeConfig
from condense.lowrank.recover import factorize_and_recover, reduce_depth_and_recover


def apply_factorize(job: Job) -> Outcome:
    """Factorize the job's model (low rank) and recover it (the stage's `recover:`)."""
    transfer, notes = recovery_transfer(job)
    model, info = factorize_and_recover(job.input(), job.config, job.recover, job.splits.train, job.splits.val,
                                        resume=job.resume, recover_data=transfer)
    notes += [f"{name}: {why}" for name, why in ((info.get("edit") or {}).get("skipped") or {}).items()]
    return Outcome(model, info={"factorize": jsonable(info)}, notes=notes)


def apply_reduce_depth(job: Job) -> Outcome:
    """Remove the job's model's least important blocks and recover it (the stage's `recover:`)."""
    transfer, notes = recovery_transfer(job)
    model, info = reduce_depth_and_recover(job.input(), job.config, job.recover, job.splits.train, job.splits.val,
                                           resume=job.resume, recover_data=transfer)
    dropped = (info.get("edit") or {}).get("dropped") or []
    return Outcome(model, info={"reduce_depth": jsonable(info)}, notes=[f"removed blocks: {', '.join(dropped)}", *notes])


METHODS.register("factorize", Method(
    family="lowrank", parse=FactorizeConfig.from_dict, apply=apply_factorize, trains=True, edits_structure=True,
    edit_kinds=("factorize",), cli="factorize", help="low-rank factorization of Linear / Conv layers, then recovery"))
METHODS.register("reduce-depth", Method(
    family="lowrank", parse=DepthConfig.from_dict, apply=apply_reduce_depth, trains=True, edits_structure=True,
    edit_kinds=("drop_blocks",), cli="reduce-depth", help="remove whole residual / transformer blocks, then recovery"))
