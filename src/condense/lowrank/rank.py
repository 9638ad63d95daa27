"""Rank selection: per layer, the candidate ranks (multiples of `round_to`) with their exact
parameter / MAC cost and kept spectral energy, and the choice by energy, by a global budget or
from explicit ranks. A candidate that is not smaller than the original layer in both parameters
and MACs is never offered, so a layer without one is left alone (with the reason recorded).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.core.linear import is_linear, linear_dims
from condense.lowrank.decompose import Spectrum, energy
from condense.lowrank.modules import max_rank
from condense.lowrank.stats import LayerStats


@dataclasses.dataclass
class Candidate:
    rank: list[int]
    params: int
    macs: int
    energy: float


@dataclasses.dataclass
class LayerPlan:
    """One selected layer: its form, original cost, spectra and the candidates (cheapest first)."""

    name: str
    module: nn.Module
    form: str
    params: int
    macs: int
    spec: Spectrum
    chol: Tensor | None
    out_energy: Tensor | None  # tucker2: energy of the output mode (plain SVD of the whole kernel)
    candidates: list[Candidate]
    note: str | None = None  # why no candidate exists

    def cost(self, cand: Candidate | None, budget: str) -> int:
        if cand is None:
            return self.macs if budget == "macs" else self.params
        return cand.macs if budget == "macs" else cand.params


def _bias(m: nn.Module) -> int:
    b = getattr(m, "bias", None)
    return 0 if b is None else b.numel()


def layer_cost(module: nn.Module, form: str, rank: list[int] | None, st: LayerStats) -> tuple[int, int]:
    """(params, MACs per sample) of `module` as it is (`rank=None`) or factorized at `rank`."""
    (hi, wi), (ho, wo) = st.hw_in, st.hw_out
    bias = _bias(module)
    if is_linear(module):  # nn.Linear or transformers' Conv1D
        o, i = linear_dims(module)
        pos = ho * wo
        if rank is None:
            return i * o + bias, i * o * pos
        r = rank[0]
        return r * (i + o) + bias, r * (i + o) * pos
    i, o = module.in_channels, module.out_channels
    kh, kw = module.kernel_size
    out_pos = ho * wo
    if rank is None:
        return i * o * kh * kw + bias, i * o * kh * kw * out_pos
    if form == "channel":
        r = rank[0]
        return r * (i * kh * kw + o) + bias, r * (i * kh * kw + o) * out_pos
    if form == "spatial":
        r = rank[0]
        return r * (i * kh + o * kw) + bias, r * i * kh * ho * wi + o * r * kw * out_pos
    r1, r2 = rank
    return i * r1 + r1 * r2 * kh * kw + r2 * o + bias, i * r1 * hi * wi + (r1 * r2 * kh * kw + r2 * o) * out_pos


def candidate_energy(plan_spec: Spectrum, form: str, rank: list[int], out_energy: Tensor | None) -> float:
    e = energy(plan_spec[1])
    kept = float(e[min(rank[0], len(e)) - 1])
    if form == "tucker2" and out_energy is not None:
        kept = min(kept, float(out_energy[min(rank[1], len(out_energy)) - 1]))
    return kept


def candidates(module: nn.Module, form: str, st: LayerStats, spec: Spectrum, out_energy: Tensor | None,
               round_to: int) -> tuple[list[Candidate], str | None]:
    """The ranks worth trying, cheapest first, and (when there is none) why."""
    params0, macs0 = layer_cost(module, form, None, st)
    top = max_rank(module, form)
    steps = list(range(round_to, top[0] + 1, round_to))
    if form == "tucker2":
        i, o = top
        if top[0] not in steps:
            steps.append(top[0])
        ranks = [[r1, min(o, round_to * math.ceil(r1 * o / i / round_to))] for r1 in steps]
        ranks = [r for r in ranks if r != [i, o]]
    else:
        ranks = [[r] for r in steps if r < top[0]]
    out = []
    for rank in ranks:
        p, m = layer_cost(module, form, rank, st)
        if p < params0 and m < macs0:
            out.append(Candidate(rank, p, m, candidate_energy(spec, form, rank, out_energy)))
    if out:
        return out, None
    if not ranks:
        return [], f"its largest rank {top} leaves no multiple of round_to={round_to} below it"
    return [], f"no rank that is a multiple of {round_to} makes it smaller (rank {ranks[0]} already has " \
               f"{layer_cost(module, form, ranks[0], st)[0]:,} parameters vs {params0:,})"


def check_rank(plan: LayerPlan, rank: int | list[int]) -> list[int]:
    """An explicit rank as a list, checked against the layer's largest rank."""
    top = max_rank(plan.module, plan.form)
    if plan.form == "tucker2":
        r = [rank, rank] if isinstance(rank, int) else list(rank)
        if r[0] > top[0] or r[1] > top[1]:
            raise ConfigError(f"factorize: rank {r} for {plan.name!r} exceeds its channels [in, out] = {top}")
        return r
    if not isinstance(rank, int):
        raise ConfigError(f"factorize: {plan.name!r} ({plan.form}) takes one rank, got {rank!r}")
    if rank > top[0]:
        raise ConfigError(f"factorize: rank {rank} for {plan.name!r} is larger than min(out, in) = {top[0]} of its "
                          f"{plan.form} matrix")
    return [rank]


def explicit_choice(plan: LayerPlan, rank: list[int], st: LayerStats) -> tuple[Candidate | None, str | None]:
    p, m = layer_cost(plan.module, plan.form, rank, st)
    if p >= plan.params or m >= plan.macs:
        return None, f"rank {rank} would not be smaller ({p:,} params / {m:,} MACs vs {plan.params:,} / {plan.macs:,})"
    return Candidate(rank, p, m, candidate_energy(plan.spec, plan.form, rank, plan.out_energy)), None


def by_energy(plan: LayerPlan, level: float) -> Candidate | None:
    """The cheapest candidate keeping at least `level` of the energy (None: keep the layer)."""
    return next((c for c in plan.candidates if c.energy >= level - 1e-12), None)


def by_budget(plans: list[LayerPlan], ratio: float, budget: str) -> tuple[dict[str, Candidate | None], float]:
    """One energy level for every layer, the highest whose total cost removes >= `ratio` of the
    selected layers' `budget`; returns the choice and the level. Raises with the closest
    reachable fraction when even the cheapest candidates do not get there."""
    total = sum(p.cost(None, budget) for p in plans)
    goal = total * (1.0 - ratio)

    def choice(level: float) -> dict[str, Candidate | None]:
        return {p.name: by_energy(p, level) for p in plans}

    def cost(ch: dict[str, Candidate | None]) -> int:
        return sum(p.cost(ch[p.name], budget) for p in plans)

    levels = sorted({c.energy for p in plans for c in p.candidates}, reverse=True)
    if not levels or cost(choice(levels[-1])) > goal:
        floor = cost(choice(levels[-1])) if levels else total
        raise ConfigError(
            f"factorize: removing {ratio:.0%} of the selected layers' {budget} cannot be met; the closest reachable "
            f"(every layer at its smallest rank) removes {1 - floor / total:.1%}"
        )
    lo, hi = 0, len(levels) - 1  # levels fall with the index and so does the cost: first index that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(choice(levels[mid])) <= goal:
            hi = mid
        else:
            lo = mid + 1
    return choice(levels[lo]), levels[lo]


def summarize(plans: list[LayerPlan], chosen: dict[str, Candidate | None]) -> dict[str, Any]:
    params0 = sum(p.params for p in plans)
    macs0 = sum(p.macs for p in plans)
    params1 = sum(p.cost(chosen.get(p.name), "params") for p in plans)
    macs1 = sum(p.cost(chosen.get(p.name), "macs") for p in plans)
    return {"selected_params": params0, "selected_macs": macs0, "factorized_params": params1, "factorized_macs": macs1,
            "params_removed": 1 - params1 / max(params0, 1), "macs_removed": 1 - macs1 / max(macs0, 1)}
