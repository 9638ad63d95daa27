"""The `prune` stage kind's record (`condense.core.method`)."""
from __future__ import annotations

from condense.core.method import METHODS, Job, Method, Outcome, jsonable
from condense.data.loader import example_inputs
from condense.distill.method import recovery_transfer
from condense.prune.config import PruneConfig
from condense.prune.masks import make_permanent
from condense.prune.recover import prune_and_recover
from condense.prune.report import pruning_report
from condense.train.distributed import is_main


def apply_prune(job: Job) -> Outcome:
    """Prune the job's model and recover it (`prune_and_recover`, the stage's `recover:`)."""
    example = example_inputs(job.splits.test, 1)
    transfer, notes = recovery_transfer(job)
    pruned, info = prune_and_recover(job.input(), job.config, job.recover, job.splits.train, job.splits.val,
                                     example_inputs=example, resume=job.resume, recover_data=transfer)
    make_permanent(pruned)
    out = Outcome(pruned, info={"prune": jsonable(info)}, notes=notes)
    if is_main():  # the report times the model: one process, not every torchrun rank at once
        out.info["report"] = jsonable(pruning_report(pruned, example))
    return out


METHODS.register("prune", Method(
    family="prune", parse=PruneConfig.from_dict, apply=apply_prune, trains=True, edits_structure=True, cli="prune",
    edit_kinds=("prune_masks", "prune_unmask", "prune_channels", "prune_heads", "prune_ffn", "mha_as_linears",
                "trim_vocab"),
    help="remove weights, channels, heads or FFN neurons, then recover"))
