"""What the engine hands back: `Group`s of channels that go together, each a list of `Member`
parameter dims; the layer kinds that produce prunable channels; `PruneGraphError`."""
from __future__ import annotations

import dataclasses

from torch import nn

from condense.core.errors import ConfigError

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def layer_kinds() -> tuple[type[nn.Module], ...]:
    """Layer types that produce prunable channels: Conv, Linear, and transformers' Conv1D (GPT-2)."""
    kinds: tuple[type[nn.Module], ...] = (*CONVS, nn.Linear, nn.Embedding)
    import sys

    pu = sys.modules.get("transformers.pytorch_utils")
    if pu is not None and hasattr(pu, "Conv1D"):
        kinds += (pu.Conv1D,)
    return kinds


class PruneGraphError(ConfigError):
    """The model's channel coupling cannot be resolved for structured pruning."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One parameter dim's share of a group. Unit c of the group covers positions
    `offset + c*expand ... offset + c*expand + expand - 1` of dim `dim` of parameter `param`.
    `role`: "out" (a layer's output rows / an embedding's columns), "in" (a consumer's input
    columns) or "chan" (per-channel values: biases, norms, running stats, tokens)."""

    module: str
    role: str
    offset: int = 0
    expand: int = 1
    param: str = ""
    dim: int = 0


@dataclasses.dataclass
class Group:
    """Channels (units) that must be removed together. `root` names the first producer layer."""

    root: str
    size: int
    members: list[Member]
    prunable: bool
    reason: str = ""
    heads: list[str] = dataclasses.field(default_factory=list)  # modules whose attention heads this group counts

    @property
    def producers(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members if m.role == "out"))

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members))
