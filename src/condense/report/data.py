"""Read a run folder (recipe runner layout or `condense demo` layout) into plain stage records.

The accepted layouts are documented in `condense.report` (the package docstring). Reading is
forgiving about what is *missing* (a stage without latency, a training stage without a log) and
strict about what is *broken* (a metrics file that is not JSON names the file and the reason).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from condense.core.errors import InputFileError

STAGE_DIR_RE = re.compile(r"^(\d+)-(.+)$")
METRICS_NAME = "metrics.json"
REPORT_NAME = "report.json"
RECIPE_NAMES = ("recipe.yaml", "recipe.yml")
DONE_NAME = "DONE"
INT8_ONNX_NAMES = ("model.int8.onnx", "model_int8.onnx")
FP32_ONNX_NAMES = ("model.onnx", "model_fp32.onnx")
CURVE_FILES = ("checkpoint/metrics.jsonl", "metrics.jsonl")

#: Keys a stage row carries that the report derives itself; ignored when an enriched report.json
#: is read back, so `write_report` can be run again on its own output.
DERIVED_KEYS = frozenset({"vs_first", "vs_previous", "accuracy_delta_pt", "illusions", "pareto", "index",
                          "bytes_deployed", "bytes_onnx_deployed", "curves", "warnings"})


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


def _resolve(root: Path, p: Any) -> Path | None:
    if not isinstance(p, str) or not p:
        return None
    cand = Path(p)
    for c in ((cand,) if cand.is_absolute() else ()) + (root / cand, root / cand.name, cand):
        if c.is_dir():
            return c
    return None


def _stage_extras(stage: Stage, warnings: list[str]) -> None:
    """Fill edits, curves, int8 file size and flags from the stage folder and its row."""
    row = stage.row
    folder = stage.path
    if folder is not None:
        meta_path = folder / "condense.json"
        if meta_path.is_file():
            try:
                meta = read_json(meta_path)
            except InputFileError as e:
                warnings.append(str(e))
                meta = {}
            if isinstance(meta, dict) and isinstance(meta.get("edits"), list):
                stage.edits = [e for e in meta["edits"] if isinstance(e, dict)]
        for rel in CURVE_FILES:
            f = folder / rel
            if f.is_file():
                stage.curves, w = read_jsonl(f)
                warnings.extend(w)
                break
        for name in INT8_ONNX_NAMES:
            if (folder / name).is_file():
                stage.bytes_onnx_int8 = (folder / name).stat().st_size
                break
    if not stage.edits and isinstance(row.get("edits"), list):
        stage.edits = [e for e in row["edits"] if isinstance(e, dict)]
    b = num(row.get("bytes_onnx_int8"))
    if b is not None:
        stage.bytes_onnx_int8 = int(b)
    if not stage.curves and isinstance(row.get("history"), list):
        stage.curves = [r for r in row["history"] if isinstance(r, dict)]
    notes = row.get("notes")
    stage.notes = [str(n) for n in notes] if isinstance(notes, list) else ([str(notes)] if notes else [])
    pl = row.get("per_layer")
    if isinstance(pl, dict):
        stage.per_layer = {str(k): v for k, v in pl.items() if isinstance(v, dict)}
    sens = row.get("sensitivity")
    if isinstance(sens, dict):
        clean: dict[str, list[list[float]]] = {}
        for layer, pts in sens.items():
            if isinstance(pts, list):
                xy = [[num(p[0]), num(p[1])] for p in pts if isinstance(p, list | tuple) and len(p) >= 2]
                xy = [p for p in xy if p[0] is not None and p[1] is not None]
                if xy:
                    clean[str(layer)] = sorted(xy)  # type: ignore[arg-type]
        stage.sensitivity = clean
    info = row.get("info") if isinstance(row.get("info"), dict) else {}
    if isinstance(info.get("deployed"), list):
        stage.deployed = [d for d in info["deployed"] if isinstance(d, dict)]
    if isinstance(row.get("int8_vs_fp32"), dict):
        stage.int8_vs_fp32 = row["int8_vs_fp32"]
    else:  # the runner keeps `Int8ExportResult.to_dict()` under info; its "latency" is the comparison
        for key in ("int8_export", "export"):
            res = info.get(key)
            if isinstance(res, dict) and isinstance(res.get("latency"), dict) and isinstance(res["latency"].get("batches"), dict):
                stage.int8_vs_fp32 = res["latency"]
                break
    if not stage.per_layer:
        stage.per_layer = per_layer_from_edits(stage.edits)
    stage.latency = normalize_latency(row.get("latency_ms"))
    for key in ("masked", "parametrizations", "fake_quant", "quantized"):
        if key in row:
            stage.flags[key] = row[key]


def per_layer_from_edits(edits: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Bit widths and channel counts the edit log records, when the row has no per_layer:
    quantize edits carry layers {name: {"bits" | "weight_bits": b}}, prune_channels edits carry
    groups [{"root": name, "keep": [...]}] (the latest edit of a layer wins)."""
    out: dict[str, dict[str, Any]] = {}
    for e in edits:
        params = e.get("params") if isinstance(e.get("params"), dict) else {}
        layers = params.get("layers")
        if isinstance(layers, dict):
            for name, spec in layers.items():
                bits = num(spec.get("weight_bits", spec.get("bits"))) if isinstance(spec, dict) else None
                if bits is not None:
                    out.setdefault(str(name), {})["bits"] = int(bits)
        if e.get("kind") == "prune_channels":
            for g in params.get("groups") or []:
                if isinstance(g, dict) and isinstance(g.get("keep"), list) and g.get("root") is not None:
                    out.setdefault(str(g["root"]), {})["channels"] = len(g["keep"])
    return out


def _strip_derived(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in DERIVED_KEYS}


def _runner_stages(root: Path, top: dict[str, Any], warnings: list[str]) -> list[Stage]:
    folders = sorted((p for p in root.iterdir() if p.is_dir() and STAGE_DIR_RE.match(p.name)),
                     key=lambda p: (int(STAGE_DIR_RE.match(p.name).group(1)), p.name))  # type: ignore[union-attr]
    for f in folders:
        if not (f / METRICS_NAME).is_file() and not (f / DONE_NAME).exists():
            warnings.append(f"{f.name}: started but not finished (no {METRICS_NAME} yet); not in this report")
    folders = [f for f in folders if (f / METRICS_NAME).is_file() or (f / DONE_NAME).exists()]
    # The top-level report.json, when present, gives the order; folders it does not list follow.
    order: list[Path] = []
    listing: dict[Path, dict[str, Any]] = {}
    # Our own earlier output: its stage entries are rows we derived, so take only the order from it.
    written_by_us = isinstance(top.get("report"), dict) and str(top["report"].get("format", "")).startswith("condense-report")
    for entry in top.get("stages") or []:
        keys = [entry] if isinstance(entry, str) else (
            [entry.get(k) for k in ("dir", "folder", "path", "artifact", "stage", "name")] if isinstance(entry, dict) else [])
        for key in keys:
            if not isinstance(key, str):
                continue
            hit = next((f for f in folders if f.name == Path(key).name), None) or next(
                (f for f in folders if STAGE_DIR_RE.match(f.name).group(2) == key), None)  # type: ignore[union-attr]
            if hit is not None and hit not in order:
                order.append(hit)
                if isinstance(entry, dict) and not written_by_us:
                    listing[hit] = _strip_derived(entry)
                break
    order += [f for f in folders if f not in order]
    stages = []
    for folder in order:
        mpath = folder / METRICS_NAME
        if not mpath.is_file():
            warnings.append(f"{folder.name}: no {METRICS_NAME}; the stage has no numbers and is left out")
            continue
        row = read_json(mpath)
        if not isinstance(row, dict):
            raise InputFileError(f"{mpath}: expected a JSON object (the stage's measured row)")
        row = _strip_derived(row)
        name = str(row.get("stage") or STAGE_DIR_RE.match(folder.name).group(2))  # type: ignore[union-attr]
        kind = row.get("kind")
        st = Stage(index=len(stages), name=name, row=row, kind=str(kind) if kind else None, dir=folder.name,
                   path=folder, done=(folder / DONE_NAME).exists(), listing=listing.get(folder, {}))
        if not st.done:
            warnings.append(f"stage “{name}” ({folder.name}) has no {DONE_NAME} marker: it did not finish, its numbers may be partial")
        _stage_extras(st, warnings)
        stages.append(st)
    return stages


def _demo_stages(root: Path, top: dict[str, Any], warnings: list[str]) -> list[Stage]:
    stages = []
    for entry in top.get("stages") or []:
        if not isinstance(entry, dict):
            continue
        row = _strip_derived(entry)
        name = str(row.get("stage") or row.get("name") or f"stage {len(stages) + 1}")
        loc = row.get("dir") or row.get("artifact")
        folder = _resolve(root, loc)
        kind = row.get("kind")
        st = Stage(index=len(stages), name=name, row=row, kind=str(kind) if kind else None,
                   dir=str(loc) if loc else None, path=folder)
        _stage_extras(st, warnings)
        stages.append(st)
    return stages


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder (or a report.json file) into a `Run`; raise InputFileError if there is nothing to report."""
    p = Path(run_dir)
    top_path: Path | None = None
    if p.is_file():
        top_path, root = p, p.parent
    elif p.is_dir():
        root = p
        top_path = p / REPORT_NAME if (p / REPORT_NAME).is_file() else None
    else:
        raise InputFileError(f"{p}: no such run folder")
    top: dict[str, Any] = {}
    if top_path is not None:
        loaded = read_json(top_path)
        if not isinstance(loaded, dict):
            raise InputFileError(f"{top_path}: expected a JSON object with a 'stages' list")
        top = loaded
    warnings: list[str] = []
    has_stage_dirs = any(d.is_dir() and STAGE_DIR_RE.match(d.name) and (d / METRICS_NAME).is_file() for d in root.iterdir())
    if has_stage_dirs:
        layout, stages = "runner", _runner_stages(root, top, warnings)
    else:
        layout, stages = "demo", _demo_stages(root, top, warnings)
    if not stages:
        raise InputFileError(
            f"{root}: nothing to report: no stage folders (NN-name/{METRICS_NAME}) and no {REPORT_NAME} with a 'stages' list of rows"
        )
    recipe_text = None
    for name in RECIPE_NAMES:
        if (root / name).is_file():
            recipe_text = (root / name).read_text(encoding="utf-8", errors="replace")
            break
    if recipe_text is None and isinstance(top.get("recipe"), str):
        recipe_text = top["recipe"]
    return Run(root=root, layout=layout, stages=stages, top=top, recipe_text=recipe_text, warnings=warnings)
