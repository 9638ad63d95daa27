"""Read a run folder (recipe runner layout or `condense demo` layout) into plain stage records.

The accepted layouts are documented in `condense.report` (the package docstring). Reading is
forgiving about what is *missing* (a stage without latency, a training stage without a log) and
strict about what is *broken* (a metrics file that is not JSON names the file and the reason).
The records it fills live in `condense.report.records`, the latency pass in
`condense.report.latency` (both re-exported here).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from condense.core.errors import InputFileError
from condense.report.latency import MAX_SPREAD, apply_latency_pass
from condense.report.records import (
    Run,
    Stage,
    fp32_label,
    normalize_latency,
    num,
    read_json,
    read_jsonl,
)

__all__ = ["MAX_SPREAD", "REPORT_NAME", "Run", "Stage", "apply_latency_pass", "fp32_label", "load_run",
           "normalize_latency", "num", "per_layer_from_edits", "read_json", "read_jsonl"]

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


def _torch_is_simulation(stage: Stage) -> bool:
    """The stage's torch model is the int8 simulation: its deployed file is the int8 ONNX, or
    (runs before issue 27) its notes say so."""
    if str(stage.row.get("onnx_file") or "").endswith(INT8_ONNX_NAMES):
        return True
    return any("fake-quant simulation" in n or "carrying the int8 plan" in n for n in stage.notes)


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
