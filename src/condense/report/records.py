"""The plain records a report is built from (`Stage`, `Run`) and the forgiving readers of their
values: `num` (a finite float or None), JSON / JSON-lines files, latency tables in either format."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from condense.core.errors import InputFileError


def num(x: Any) -> float | None:
    """`x` as a finite float, or None (booleans, strings, NaN and infinities are not numbers here)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise InputFileError(f"{path}: cannot read ({e.strerror or e})") from None


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of a JSON-lines log, the last record per epoch kept (a resumed run may repeat one).

    A line that is not a JSON object (e.g. cut by a crash) is skipped and reported in the warnings.
    """
    records: dict[Any, dict[str, Any]] = {}
    warnings: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        return [], [f"{path}: cannot read ({e.strerror or e})"]
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            warnings.append(f"{path}:{i}: not a JSON line, skipped")
            continue
        if isinstance(rec, dict):
            records[rec.get("epoch", f"line{i}")] = rec
    ordered = sorted(records.values(), key=lambda r: (num(r.get("epoch")) is None, num(r.get("epoch")) or 0))
    return ordered, warnings


def normalize_latency(lat: Any) -> dict[str, dict[int, float | None]]:
    """{runtime: {batch: p50_ms}} from either the row format ({rt: {"1": 0.2}}) or `profile()`'s
    ({rt: {"1": {"p50_ms": 0.2, ...}}}); skipped or missing entries become None."""
    out: dict[str, dict[int, float | None]] = {}
    if not isinstance(lat, dict):
        return out
    for rt, by_bs in lat.items():
        if not isinstance(by_bs, dict):
            continue
        per: dict[int, float | None] = {}
        for bs, v in by_bs.items():
            try:
                b = int(bs)
            except (TypeError, ValueError):
                continue
            per[b] = num(v.get("p50_ms")) if isinstance(v, dict) else num(v)
        out[str(rt)] = dict(sorted(per.items()))
    return out


@dataclasses.dataclass
class Stage:
    """One measured stage, normalized. `row` keeps every key of the input row unchanged."""

    index: int
    name: str
    row: dict[str, Any]
    kind: str | None = None  # the runner's stage kind (train, distill, prune, quantize, ...)
    dir: str | None = None  # folder name inside the run folder (runner layout) or artifact path
    path: Path | None = None  # resolved folder, when it exists
    done: bool | None = None  # DONE marker present (None: layout without markers)
    edits: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    per_layer: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    sensitivity: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    int8_vs_fp32: dict[str, Any] | None = None
    deployed: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per deployed file (export stage)
    curves: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    latency: dict[str, dict[int, float | None]] = dataclasses.field(default_factory=dict)
    bytes_onnx_int8: int | None = None
    #: {runtime: {batch: p50_ms}} of the int8 simulation (fake-quant torch): never a stage latency
    simulated: dict[str, dict[int, float | None]] = dataclasses.field(default_factory=dict)
    #: (runtime, batch) whose latency was flagged unreliable (p90/p50, machine load)
    unreliable: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    #: {batch: ratio to the reference} from the run's interleaved latency pass, where it timed this stage
    pass_ratios: dict[int, float] = dataclasses.field(default_factory=dict)
    flags: dict[str, Any] = dataclasses.field(default_factory=dict)  # masked / parametrizations / ...
    listing: dict[str, Any] = dataclasses.field(default_factory=dict)  # the runner's report.json entry, if an object

    def metric(self, key: str) -> float | None:
        return num(self.row.get(key))

    @property
    def edit_kinds(self) -> list[str]:
        return [str(e.get("kind")) for e in self.edits if isinstance(e, dict)]


@dataclasses.dataclass
class Run:
    """A whole run: stages in order, plus what the run folder says about itself."""

    root: Path
    layout: str  # "runner" or "demo"
    stages: list[Stage]
    top: dict[str, Any]  # the top-level report.json (or {})
    recipe_text: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)


def fp32_label(int8_vs_fp32: dict[str, Any] | None) -> str:
    """What the "fp32" of an int8-vs-fp32 comparison is: the original model, or (what
    `export_int8_onnx` timed without a `reference`) the quantized model's BN-folded float twin."""
    ref = (int8_vs_fp32 or {}).get("fp32_reference")
    return "fp32 (BN-folded twin)" if ref == "bn_folded_twin" else "fp32"
