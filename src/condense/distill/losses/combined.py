"""A weighted sum of distillation losses built from plain specs (recipe / config data).

    build_losses([{"name": "soft_kd", "weight": 0.9, "temperature": 4},
                  {"name": "ce", "weight": 0.1}])
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from condense.core.errors import ConfigError, did_you_mean
from condense.core.registry import Registry
from condense.distill.losses.base import LOSSES, DistillLoss, LossInputs


class CombinedLoss(nn.Module):
    """`total = sum_k w_k * L_k(inputs)`; also returns each unweighted term (detached) for logs.

    Terms are keyed by loss name; a repeated name gets a suffix (`fitnet`, `fitnet_2`, ...).
    It is an `nn.Module`, so the terms' trainable parts (projectors, CRD heads) are its
    parameters and their buffers (CRD memory) its state: the task trains and checkpoints it.
    """

    def __init__(self, terms: Mapping[str, DistillLoss], weights: Mapping[str, float]) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("distillation losses: the list is empty")
        if set(terms) != set(weights):
            raise ConfigError("CombinedLoss: terms and weights name different losses")
        for key, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"loss {key!r}: weight must be a finite number >= 0, got {w!r}")
        if all(w == 0 for w in weights.values()):
            raise ConfigError("distillation losses: every weight is 0; give at least one a weight > 0")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {k: float(weights[k]) for k in terms}

    @property
    def needs(self) -> frozenset[str]:
        """Union of what the terms read ("logits", "features", "targets", "index")."""
        out: frozenset[str] = frozenset()
        for term in self.terms.values():
            out |= term.needs
        return out

    def feature_layers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(student, teacher) module names to tap, deduplicated, in first-seen order."""
        s: dict[str, None] = {}
        t: dict[str, None] = {}
        for term in self.terms.values():
            ls, lt = term.feature_layers()
            s.update(dict.fromkeys(ls))
            t.update(dict.fromkeys(lt))
        return tuple(s), tuple(t)

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        """Let every term resolve its layers against the models (before `feature_layers()`)."""
        for term in self.terms.values():
            term.bind(student, teacher)

    def materialize(self, inp: LossInputs) -> None:
        """Create every term's lazy parameters; call before building the optimizer."""
        for term in self.terms.values():
            term.materialize(inp)

    def forward(self, inp: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        total: Tensor | None = None
        logs: dict[str, Tensor] = {}
        for key, term in self.terms.items():
            value = term.forward_inputs(inp)
            logs[key] = value.detach()
            weighted = value * self.weights[key]
            total = weighted if total is None else total + weighted
        assert total is not None
        return total, logs

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{k}={w:g}" for k, w in self.weights.items())


def build_losses(specs: Sequence[Mapping[str, Any]], registry: Registry[type[DistillLoss]] | None = None) -> CombinedLoss:
    """Build a `CombinedLoss` from `[{"name": ..., "weight": ..., **hyper_parameters}, ...]`.

    `weight` defaults to 1. An unknown name raises UnknownNameError (with close names); an
    unknown or badly typed hyper-parameter raises ConfigError naming the loss and the key.
    """
    if registry is None:
        registry = LOSSES
    if isinstance(specs, Mapping) or not isinstance(specs, Sequence) or isinstance(specs, str):
        raise ConfigError(f"distillation losses: expected a list of mappings, got {type(specs).__name__}")
    terms: dict[str, DistillLoss] = {}
    weights: dict[str, float] = {}
    for i, spec in enumerate(specs):
        where = f"losses[{i}]"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping with a 'name', got {spec!r}")
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: missing 'name' (one of {', '.join(registry.names())})")
        cls = registry.get(name)
        where = f"{where} ({name})"
        weight = kwargs.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{where}: weight must be a finite number >= 0, got {weight!r}")
        params = _init_params(cls)
        for key in kwargs:
            if key not in params:
                valid = ", ".join(["weight", *params]) or "weight"
                raise ConfigError(
                    f"{where}: unknown key {key!r}{did_you_mean(str(key), ['weight', *params])}; "
                    f"valid keys: {valid}"
                )
        missing = [p for p, param in params.items() if param.default is inspect.Parameter.empty and p not in kwargs]
        if missing:
            raise ConfigError(f"{where}: missing required key(s): {', '.join(missing)}")
        try:
            term = cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
        key, n = name, 2
        while key in terms:
            key, n = f"{name}_{n}", n + 1
        terms[key] = term
        weights[key] = float(weight)
    return CombinedLoss(terms, weights)  # refuses an empty list and all-zero weights


def _init_params(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)
    return {
        n: p
        for n, p in sig.parameters.items()
        if n != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


