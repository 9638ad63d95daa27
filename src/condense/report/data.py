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

#: p90 / p50 above this marks a latency unreliable (as `condense.evaluate.timing.MAX_SPREAD`,
#: repeated here so reading a report never imports torch)
MAX_SPREAD = 2.0

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
                # what "fp32" is there: an export before issue 27 always timed the BN-folded twin
                stage.int8_vs_fp32 = {"fp32_reference": res.get("fp32_reference", "bn_folded_twin"), **res["latency"]}
                break
    if not stage.per_layer:
        stage.per_layer = per_layer_from_edits(stage.edits)
    stage.latency = normalize_latency(row.get("latency_ms"))
    stage.simulated = normalize_latency(row.get("simulation_latency_ms"))
    if "torch" in stage.latency and _torch_is_simulation(stage):  # a run from before issue 27
        stage.simulated["torch"] = stage.latency.pop("torch")
        stage.notes.append("torch latency of this stage is the int8 simulation (fake-quant), not a deployment "
                           "runtime: left out of the latency columns")
    for key in ("masked", "parametrizations", "fake_quant", "quantized"):
        if key in row:
            stage.flags[key] = row[key]


def fp32_label(int8_vs_fp32: dict[str, Any] | None) -> str:
    """What the "fp32" of an int8-vs-fp32 comparison is: the original model, or (what
    `export_int8_onnx` timed without a `reference`) the quantized model's BN-folded float twin."""
    ref = (int8_vs_fp32 or {}).get("fp32_reference")
    return "fp32 (BN-folded twin)" if ref == "bn_folded_twin" else "fp32"


def _torch_is_simulation(stage: Stage) -> bool:
    """The stage's torch model is the int8 simulation: its deployed file is the int8 ONNX, or
    (runs before issue 27) its notes say so."""
    if str(stage.row.get("onnx_file") or "").endswith(INT8_ONNX_NAMES):
        return True
    return any("fake-quant simulation" in n or "carrying the int8 plan" in n for n in stage.notes)


def _spread_warnings(stage: Stage, max_spread: float) -> list[str]:
    """A stage's own latency medians whose p90 is more than `max_spread` times the median."""
    out = []
    p90 = normalize_latency(stage.row.get("latency_p90_ms"))
    for rt, by in stage.latency.items():
        for b, p50 in by.items():
            q = p90.get(rt, {}).get(b)
            if p50 and q is not None and q / p50 > max_spread:
                stage.unreliable.add((rt, b))
                out.append(f"stage “{stage.name}”: {rt} latency at batch {b} is unreliable: p90 {q:.3f} ms is "
                           f"{q / p50:.1f}x the median {p50:.3f} ms (timed alone, not against the other stages)")
    load = stage.row.get("load") if isinstance(stage.row.get("load"), dict) else {}
    load1, cpus = num(load.get("load_1min")), num(load.get("cpus"))
    if load1 is not None and cpus and load1 > cpus and stage.latency:
        for rt, by in stage.latency.items():
            stage.unreliable.update((rt, b) for b in by)
            out.append(f"stage “{stage.name}”: {rt} latency is unreliable: timed while the machine's load was "
                       f"{load1:.2f} (1-minute average) on {int(cpus)} CPUs (timed alone, not against the other stages)")
    return out


def apply_latency_pass(stages: list[Stage], lp: Any, warnings: list[str], max_spread: float = MAX_SPREAD) -> None:
    """Put the run's interleaved latency pass (`condense.evaluate.timing.onnx_latency_pass`, kept
    in report.json as "latency_pass") in place of each timed stage's own ONNX Runtime medians, so
    every ratio the report states comes from one pass; flag what is unreliable in `warnings`."""
    for st in stages:
        warnings.extend(_spread_warnings(st, max_spread))
    if not isinstance(lp, dict) or not isinstance(lp.get("batches"), dict):
        return
    by_name = {st.name: st for st in stages}
    for bs, res in lp["batches"].items():
        try:
            b = int(bs)
        except (TypeError, ValueError):
            continue
        if not isinstance(res, dict) or not isinstance(res.get("timings"), dict):
            continue
        reliable = res.get("reliable") is not False
        for name, t in res["timings"].items():
            st = by_name.get(name)
            p50 = num(t.get("wall_ms")) if isinstance(t, dict) else None
            if st is None or p50 is None:
                continue
            st.latency.setdefault("onnxruntime", {})[b] = p50
            st.latency["onnxruntime"] = dict(sorted(st.latency["onnxruntime"].items()))
            st.unreliable.discard(("onnxruntime", b))  # the stage's own timing is replaced by the pass
            if not reliable:
                st.unreliable.add(("onnxruntime", b))
            r = num((res.get("ratios") or {}).get(name))
            if r is not None:
                st.pass_ratios[b] = r
    warnings.extend(str(w) for w in lp.get("warnings") or [])
    # the stages' own ONNX Runtime timings are superseded: their spread no longer matters
    warnings[:] = [w for w in warnings if not (w.startswith("stage “") and ": onnxruntime latency " in w
                                               and _timed_in_pass(w, lp))]


def _timed_in_pass(warning: str, lp: dict[str, Any]) -> bool:
    names = {n for res in lp["batches"].values() if isinstance(res, dict) for n in (res.get("timings") or {})}
    return any(warning.startswith(f"stage “{n}”:") for n in names)


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
    apply_latency_pass(stages, top.get("latency_pass"), warnings)
    recipe_text = None
    for name in RECIPE_NAMES:
        if (root / name).is_file():
            recipe_text = (root / name).read_text(encoding="utf-8", errors="replace")
            break
    if recipe_text is None and isinstance(top.get("recipe"), str):
        recipe_text = top["recipe"]
    return Run(root=root, layout=layout, stages=stages, top=top, recipe_text=recipe_text, warnings=warnings)
