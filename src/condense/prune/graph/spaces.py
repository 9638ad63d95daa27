"""Dimension descriptors (`Segs`, `Split`, `Fold`) and the union-find over channel spaces
(`Spaces`: tie, coarsen into whole units, refine into parts) that the tracer builds groups with."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

# -- descriptors -----------------------------------------------------------------------------------
Seg = tuple[int, int]  # (space, width in positions)


@dataclasses.dataclass(frozen=True)
class Segs:
    segs: tuple[Seg, ...]


@dataclasses.dataclass(frozen=True)
class Split:
    space: int
    sizes: tuple[int, ...]
    idx: int


@dataclasses.dataclass(frozen=True)
class Fold:
    """A data dim folded over a tracked one (`(B, H, ...) -> (B*H, ...)`, attention written as
    batched matmuls): position b*width + i is unit i's position of `inner`, for every b < outer."""

    inner: Any
    outer: int


Desc = Segs | Split | Fold | None


def is_inner(d: Any) -> bool:
    """Positions inside a unit (a head's own dims): free to slice, contract or reduce."""
    return isinstance(d, Split) and d.idx > 0


def is_outerish(d: Any) -> bool:
    """A lazy split's outer dim (the heads): tying it coarsens the space into whole units."""
    return isinstance(d, Split) and d.idx == 0


class Spaces:
    """Union-find over spaces. A live space has `n` units; a refined space has `children`.
    Member records `(param, dim, offset, width)` live on spaces; classes hold spaces."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.n: list[int] = []
        self.children: list[list[int] | None] = []
        self.records: list[list[tuple[str, int, int, int]]] = []
        self.fixed: dict[int, list[str]] = {}
        self.spaces: dict[int, list[int]] = {}
        self.heads: dict[int, list[str]] = {}
        self.share: dict[int, int] = {}  # a refined part's unit count when it was made

    def new(self, n: int, fixed: str | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.n.append(n)
        self.children.append(None)
        self.records.append([])
        self.spaces[i] = [i]
        self.fixed[i] = [fixed] if fixed else []
        self.heads[i] = []
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def size(self, s: int) -> int:
        return self.n[self.find(s)]

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.n[ra] != self.n[rb]:
            return False
        ra, rb = min(ra, rb), max(ra, rb)
        self.parent[rb] = ra
        self.spaces[ra] += self.spaces.pop(rb)
        self.fixed[ra] += self.fixed.pop(rb)
        self.heads[ra] += self.heads.pop(rb)
        return True

    def fix(self, s: int, reason: str) -> None:
        r = self.find(s)
        if reason not in self.fixed[r]:
            self.fixed[r].append(reason)

    def coarsen(self, s: int, units: int) -> bool:
        """Group the class's channels into `units` consecutive blocks (whole heads / groups)."""
        r = self.find(s)
        if units <= 0 or self.n[r] % units:
            return False
        for t in self.spaces[r]:
            self.n[t] = units
        return True

    def refine(self, s: int, sizes: Sequence[int]) -> list[int]:
        """Split the class of `s` into consecutive parts of `sizes` units; returns the part of `s`
        for each size (the same parts of every other space in the class are tied to them)."""
        r = self.find(s)
        assert sum(sizes) == self.n[r]
        if len(sizes) == 1:
            return [s]
        parts: dict[int, list[int]] = {}
        total = self.n[r]
        for t in list(self.spaces[r]):
            kids = []
            start = 0
            for k in sizes:
                c = self.new(k)
                self.share[c] = k
                kids.append(c)
                for param, dim, off, width in self.records[t]:
                    unit = width // total
                    self.records[c].append((param, dim, off + start * unit, k * unit))
                start += k
            self.children[t] = kids
            self.records[t] = []
            parts[t] = kids
        reasons, heads = self.fixed[r], self.heads[r]
        for i in range(len(sizes)):
            first = parts[self.spaces[r][0]][i]
            for t in self.spaces[r][1:]:
                self.union(first, parts[t][i])
            self.fixed[self.find(first)] += reasons
            self.heads[self.find(first)] += heads
        return parts[s]

    def live(self, seg: Seg) -> list[Seg]:
        """Resolve a segment through later refinements into live spaces."""
        s, w = seg
        kids = self.children[s]
        if kids is None:
            return [(s, w)]
        total = sum(self.share[k] for k in kids)
        out: list[Seg] = []
        for k in kids:
            out += self.live((k, w * self.share[k] // total))
        return out
