"""The structural edit log: how a saved model differs from its base architecture.

Methods that change a model's structure (channel pruning, low-rank replacement, quantized module
swaps) call `record_edit(model, kind, **params)` after applying the edit, and register a replay
function under the same `kind` in `EDITS`. `load()` rebuilds the base architecture from its spec,
replays the edits in order on the fresh module, and only then loads the weights strictly. The
params must be plain JSON data (names, ints, lists), never module objects.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from condense.core.errors import InputFileError
from condense.core.linear import is_conv1d, swap_conv1d
from condense.core.registry import Registry

#: kind -> function(model, **params) that re-applies the edit to a freshly built module.
EDITS: Registry[Callable[..., None]] = Registry("edit")


#: the model attribute holding its edit log (named once, here; `edit_log` / `set_edit_log` read and write it)
EDITS_ATTR = "condense_edits"
#: the model attributes holding a structural edit's own report (`edit_report` / `attach_edit_report`)
REPORT_ATTRS = {"lowrank": "condense_lowrank_report", "depth": "condense_depth_report",
                "vocab": "condense_vocab_report"}


def edit_log(model: nn.Module) -> list[dict[str, Any]]:
    """The edits recorded on `model`, in order (empty when there are none)."""
    return getattr(model, EDITS_ATTR, None) or []


def set_edit_log(model: nn.Module, edits: list[dict[str, Any]]) -> None:
    """Replace `model`'s edit log by a copy of `edits`."""
    setattr(model, EDITS_ATTR, copy.deepcopy(list(edits)))


def attach_edit_report(model: nn.Module, kind: str, report: Any) -> None:
    """Let `model` carry the report of its last `kind` edit ("lowrank", "depth", "vocab")."""
    setattr(model, REPORT_ATTRS[kind], report)


def edit_report(model: nn.Module, kind: str) -> Any:
    """The report of `model`'s last `kind` edit, or None."""
    return getattr(model, REPORT_ATTRS[kind], None)


def record_edit(model: nn.Module, kind: str, **params: Any) -> None:
    """Append an edit to `model`'s edit log (checked to be replayable)."""
    EDITS.get(kind)
    set_edit_log(model, [*edit_log(model), {"kind": kind, "params": params}])


def replay_edits(model: nn.Module, edits: list[dict[str, Any]]) -> nn.Module:
    """Re-apply a recorded edit log to a freshly built base model (in order)."""
    for edit in edits:
        EDITS.get(edit["kind"])(model, **edit.get("params", {}))
    set_edit_log(model, edits)
    return model


def record_conv1d_swap(model: nn.Module, names: list[str]) -> list[str]:
    """Swap the named transformers Conv1D layers for bit-identical nn.Linear ones
    (`condense.core.linear.swap_conv1d`) and record it ("conv1d_as_linear"), so a method written
    for nn.Linear (static PTQ, QAT) runs on them and `load()` rebuilds the same layers."""
    done = swap_conv1d(model, names)
    if done:
        record_edit(model, "conv1d_as_linear", modules=done)
    return done


def check_replay_targets(model: nn.Module, kind: str, modules: list[str], fits: Callable[[nn.Module], bool],
                         expected: str) -> None:
    """Before a module-swapping edit replays: every module it names exists and is what it swaps
    (`fits`), else an InputFileError naming the edit kind, the module and what was expected."""
    for name in modules:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise InputFileError(f"edit log: {kind!r} names {name!r}, which this architecture does not have") from None
        if not fits(m):
            raise InputFileError(f"edit log: {kind!r} expects {name!r} to be {expected}, found {type(m).__name__}")


def _replay_conv1d_as_linear(model: nn.Module, modules: list[str]) -> None:
    check_replay_targets(model, "conv1d_as_linear", modules, is_conv1d, "a transformers Conv1D")
    swap_conv1d(model, modules)


EDITS.register("conv1d_as_linear", _replay_conv1d_as_linear)
