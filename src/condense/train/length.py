"""How long a `fit()` run is, from its `TrainConfig` and the size of its data (issue 27).

A run's length is counted in optimizer steps, which is what a schedule and an optimizer see:
- `max_steps` set: exactly that many steps;
- `epochs` set: that many epochs (what the user asked, however short);
- neither (the default, `epochs: None`): `auto_epochs` epochs (`AUTO_EPOCHS`, 10; a recovery
  after an edit takes 5), stretched to whole epochs of at least `min_steps` optimizer steps.
  10 epochs of 377 images in batches of 64 are 60 steps; the same default on 55,000 images is 8,600. The floor makes small data train long enough and
  leaves large data at 10 epochs.

`drop_last: "auto"` drops the last partial batch of an epoch only when it holds at most
`DROP_LAST_FRACTION` of the set (a 3-image remainder of 387 images, whose BatchNorm statistics
cost points on digits), never on a small set where the partial batch is a real share of the
data (57 of 377 images).

`length_warnings` says in words when a run is shorter than its schedule needs: fewer steps than
the warm-up (the learning rate never reaches `lr`), or very few steps in all (unless `max_steps`
set that number: an exact budget is the user's deliberate choice).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from typing import Any

from condense.data.items import count_batches
from condense.train.config import TrainConfig

#: epochs of a run whose config sets neither `epochs` nor `max_steps`, before the `min_steps` floor
#: (`TrainConfig.auto_epochs`' default)
AUTO_EPOCHS = TrainConfig.auto_epochs
#: `drop_last: "auto"` drops a partial last batch holding at most this share of the training set
DROP_LAST_FRACTION = 0.02
#: a run with fewer optimizer steps than this gets a `ShortRunWarning`
FEW_STEPS = 100


class ShortRunWarning(UserWarning):
    """A training run is shorter than its schedule needs (see `length_warnings`)."""


@dataclasses.dataclass(frozen=True)
class RunLength:
    """The resolved length of one run (global batch `batch_size` over `samples` samples)."""

    samples: int
    batch_size: int
    drop_last: bool
    steps_per_epoch: int
    epochs: int
    total_steps: int
    rule: str  # "max_steps" | "epochs" | "auto"
    why: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_drop_last(setting: bool | str, samples: int, batch_size: int) -> bool:
    """Whether to drop the last partial batch: as set, or for "auto" only when it is a small share."""
    if setting != "auto":
        return bool(setting)
    rest = samples % batch_size
    return samples >= batch_size and 0 < rest <= DROP_LAST_FRACTION * samples


def run_length(config: TrainConfig, samples: int, batch_size: int | None = None, world: int = 1) -> RunLength:
    """The length `config` gives a run over `samples` training samples (`batch_size`: per process)."""
    rank_batch = batch_size or config.batch_size
    drop = resolve_drop_last(config.drop_last, samples, rank_batch * world)
    spe = count_batches(samples, rank_batch, drop, world)
    batches = f"{spe} batch(es) of {rank_batch * world} per epoch over {samples} samples"
    if drop:
        batches += f" (last {samples % (rank_batch * world)} dropped)"
    if spe < 1:
        return RunLength(samples, rank_batch * world, drop, spe, 0, 0, "epochs", batches)
    if config.max_steps is not None:
        total, rule = config.max_steps, "max_steps"
        why = f"max_steps {total}; {batches}"
    elif config.epochs is not None:
        total, rule = config.epochs * spe, "epochs"
        why = f"epochs {config.epochs} x {batches}"
    else:
        epochs = max(config.auto_epochs, math.ceil(config.min_steps / spe))
        total, rule = epochs * spe, "auto"
        why = (f"epochs not set: {config.auto_epochs} epochs, at least min_steps {config.min_steps} optimizer steps "
               f"-> {epochs} epochs x {batches}")
    return RunLength(samples, rank_batch * world, drop, spe, math.ceil(total / spe), total, rule, why)


def length_warnings(config: TrainConfig, length: RunLength) -> list[str]:
    """Plain-words reasons the run is shorter than its schedule needs (empty when it is not)."""
    out = []
    n = length.total_steps
    if config.warmup_steps and n < config.warmup_steps:
        out.append(f"the run has {n} optimizer steps, fewer than warmup_steps {config.warmup_steps}: the learning "
                   f"rate never reaches lr {config.lr:g} ({length.why})")
    elif config.warmup_steps and n < 2 * config.warmup_steps:
        out.append(f"the run has {n} optimizer steps and {config.warmup_steps} of them warm up: less than half the "
                   f"run trains at the full schedule ({length.why})")
    if n < FEW_STEPS and length.rule != "max_steps":  # an exact step budget is a deliberate choice
        fix = "leave epochs unset (at least min_steps steps) or raise epochs" if length.rule == "epochs" else "raise min_steps"
        out.append(f"the run has only {n} optimizer steps ({length.why}); under {FEW_STEPS} steps a model "
                   f"rarely converges: {fix}, or set max_steps")
    return out


def warn_length(config: TrainConfig, length: RunLength) -> list[str]:
    """Emit each of `length_warnings` as a `ShortRunWarning`; return them."""
    msgs = length_warnings(config, length)
    # point the warning at the user's line: the first frame outside the condense package
    root, frame, level = os.path.dirname(os.path.dirname(os.path.abspath(__file__))), sys._getframe(0), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    for m in msgs:
        warnings.warn(m, ShortRunWarning, stacklevel=level)
    return msgs


__all__ = ["AUTO_EPOCHS", "DROP_LAST_FRACTION", "FEW_STEPS", "RunLength", "ShortRunWarning", "length_warnings",
           "resolve_drop_last", "run_length", "warn_length"]
