"""`Method`: the one record of a method (or stage kind) that every surface reads.

A method package registers one record per stage kind next to its code (`prune/method.py`,
`quantize/method.py`, ...)::

    METHODS.register("factorize", Method(
        family="lowrank", parse=FactorizeConfig.from_dict, apply=apply_factorize,
        edits_structure=True, trains=True, help="low-rank factorization (SVD) and recovery"))

The recipe runner (`recipes/stages.py`) turns a stage into a `Job` and calls `apply`; recipe
validation reads `parse`, `trains_for`, `edits_structure` (takes `recover:`) and `needs_input`;
the runner reads `deploys` (a result that comes out int8 is written as the int8 ONNX file ONNX
Runtime runs, in one place); the report reads `edit_kinds` (which edits mark a stage as what).
A new stage kind is one file: its config, its `apply`, and the `register` call; the package
root lists the file in `condense.REGISTRY_PROVIDERS["method"]`.

This module is on the ground floor: it names the types of the floors above (`Splits`,
`TrainConfig`, `RecoverConfig`) only for type checkers.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.core.jsonio import plain_default, strict_data
from condense.core.registry import Registry

if TYPE_CHECKING:
    from condense.data.base import Splits
    from condense.train.config import TrainConfig
    from condense.train.recover import RecoverConfig


@dataclasses.dataclass
class Job:
    """What a method receives, whatever surface calls it (a recipe stage, the CLI, a script).

    `model`: the input model (a copy the method may change), or the model the stage built from
    its `model:` section; None for a stage with neither. `train(defaults)`: the run's training
    settings over the method's `defaults` (a stage's `train:` wins). `recover`: the recovery of a
    structural edit (None when the record does not edit structure). `folder`: where the method may
    write files (its stage folder). `resume`: continue from the checkpoint in `folder`.
    """

    model: nn.Module | None
    config: Config
    splits: Splits
    folder: Path
    train: Callable[[dict[str, Any] | None], TrainConfig]
    teachers: list[nn.Module] = dataclasses.field(default_factory=list)
    recover: RecoverConfig | None = None
    resume: bool = False
    train_section: dict[str, Any] = dataclasses.field(default_factory=dict)  # the stage's `train:` as written
    where: str = ""  # "recipe.yaml:12 stage 'student'": the prefix of a ConfigError about this job

    def input(self) -> nn.Module:
        """The input model; a `ConfigError` naming the stage when there is none."""
        if self.model is None:
            raise ConfigError(f"{self.where}: needs an input model; give it 'model:' or 'from: <stage>'")
        return self.model


@dataclasses.dataclass
class Outcome:
    """What a method returns: the output model, its JSON-able `info` (kept in the stage's
    metrics), human `notes`, and `splits` when the method changes the data the later stages see."""

    model: nn.Module | None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    splits: Splits | None = None
    deployed_onnx: Path | None = None  # a file the method wrote itself (the export stage)


@dataclasses.dataclass(frozen=True)
class Method:
    """One method's description (module docstring).

    `family`: the package it belongs to ("prune", "quantize", "lowrank", "distill", "ssl",
    "reduce", "tune", "train", "export", "evaluate"). `parse(raw)`: a stage's `config:` mapping
    -> the method's config (raises `ConfigError` on a bad name or value, so a misspelt loss or
    scorer fails at validation). `apply(job)` -> `Outcome`. `trains`: the method trains (takes a
    `train:` section, checkpoints, runs on every torchrun rank); `trains_when(config)` answers
    per config instead (quantize trains for QAT only). `edits_structure`: it removes capacity
    and takes a `recover:` section (`condense.train.edit.edit_and_recover`). `takes_model`: the
    stage may build its model from a `model:` section instead of taking an earlier stage's.
    `needs_input`: it needs a model (`from:`, or `model:` where it takes one). `measured`: False for
    a method that changes data, not a model (no measured row). `deploys`: "auto" writes the int8
    ONNX file when the result is an int8 model (`condense.export.deploy_precision`), "self" when
    `apply` writes its deployed file itself, "fp32" (the default) never: the row's ONNX file is the
    float export. `edit_kinds`: the edit-log kinds its
    result carries (what `load()` replays, and what the report reads to name a stage's edit).
    `cli`: the `condense` command that runs it, if any.
    """

    family: str
    parse: Callable[[dict[str, Any]], Config]
    apply: Callable[[Job], Outcome]
    trains: bool = False
    trains_when: Callable[[Config], bool] | None = None
    edits_structure: bool = False
    takes_model: bool = False
    needs_input: bool = True
    measured: bool = True
    deploys: str = "fp32"
    edit_kinds: tuple[str, ...] = ()
    cli: str | None = None
    help: str = ""

    def trains_for(self, config: Config) -> bool:
        """Whether this method with `config` trains (takes `train:`, runs on every rank)."""
        return self.trains if self.trains_when is None else self.trains_when(config)


#: stage kind -> its record; filled by the modules `condense.REGISTRY_PROVIDERS["method"]` names
METHODS: Registry[Method] = Registry("method")


def _plain_or_str(o: Any) -> Any:
    try:
        return plain_default(o)
    except TypeError:
        return str(o)


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON values for a stage's `info` (`core.jsonio.strict_data`: `to_dict()`,
    paths, arrays and scalars as plain data, non-finite numbers as null; anything else as `str`)."""
    return strict_data(obj, default=_plain_or_str, what="stage info")
