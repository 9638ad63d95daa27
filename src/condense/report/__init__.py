"""`condense report DIR`: one self-contained HTML file, the same numbers as JSON and as Markdown.

    from condense.report import write_report
    paths = write_report("runs/digits")          # -> ReportPaths(html=..., markdown=..., json=...)

What it shows: a before/after table per stage (accuracy, params, nonzero params, bytes on disk of
the safetensors / ONNX / int8 ONNX files, FLOPs, median latency per runtime and batch size, and
the change against the first stage); accuracy against size and against latency (per runtime, at
batch 1 and the largest batch) with the Pareto front marked; per-layer sparsity / bit width /
rank / channels; training curves; sensitivity curves; and, in words, every illusory gain it can
detect (see `condense.report.illusions`).

Expected input
==============
`run_dir` is a run folder (or the path of a report.json inside one). Two layouts are read.

1. Recipe runner (chosen when any `NN-<name>/metrics.json` folder exists)::

       run/
         recipe.yaml                the resolved recipe (shown verbatim, escaped)
         report.json                optional; {"stages": [...]} gives the stage order: each entry
                                    a folder name ("01-train"), a stage name, or an object with
                                    "dir" / "folder" / "path" / "stage" / "name". Folders it does
                                    not list follow in NN order. Other top-level keys (dataset,
                                    environment, threads, ...) are kept and shown.
         01-train/
           metrics.json             the measured row, see below
           model.safetensors        the stage's artifact ...
           condense.json            ... with "edits": [{"kind": "prune_channels", "params": {...}}, ...]
           model.onnx               optional
           model.int8.onnx          optional (its size is read from disk: bytes_onnx_int8)
           checkpoint/metrics.jsonl training stages: one JSON object per epoch with epoch,
                                    train_loss, val_loss, val_accuracy, lr, ... (a repeated epoch,
                                    e.g. after resume, keeps its last record; a cut line is skipped)
           DONE                     completion marker; a stage without it is reported as unfinished

2. `condense demo` (otherwise): report.json with "stages": a list of rows; each row's "artifact"
   (or "dir") folder, resolved against the run folder, supplies condense.json, model.int8.onnx
   and checkpoint/metrics.jsonl as above.

A row (metrics.json, or a report.json stage entry). Every key is optional except "stage" (the
folder name is used when it is missing):

    stage: str                      name shown (user text, always escaped)
    kind: str                       runner stage kind: train, distill, prune, quantize, factorize,
                                    pretrain, finetune, reduce-data, evaluate, export, tune
                                    (inferred from new edits or the name when missing)
    accuracy: float                 in [0, 1] (values above 1 are taken as percent)
    params, nonzero_params: int     parameter elements, and those not exactly zero
    bytes_safetensors, bytes_onnx: int   file sizes on disk; bytes_onnx_int8: int (optional)
    flops, macs: int                per sample
    latency_ms: {runtime: {batch: p50_ms}}   e.g. {"torch": {"1": 0.21, "256": 3.4},
                                    "onnxruntime": {...}}; `profile()`'s {"p50_ms": ...} dicts
                                    are accepted too; a runtime name containing "int8"
                                    (e.g. "onnxruntime_int8") is compared with its fp32 twin
    notes: [str]                    shown under the stage
    per_layer: {layer: {"sparsity": x, "bits": b, "rank": r, "channels": c}}   any subset
    sensitivity: {layer: [[ratio, accuracy], ...]}
    int8_vs_fp32: {"batches": {batch: {"fp32_ms", "int8_ms", "int8_over_fp32"}}, "notes": [...]}
                                    (`condense.quantize.ort_latency_comparison` output, or an
                                    `Int8ExportResult.to_dict()` holding it under "latency")
    masked / parametrizations / fake_quant / quantized: bool   optional flags

Outputs (next to the input unless `out` says otherwise): report.html, report.md and report.json.
report.json is the input report.json (all its top-level keys kept) with "stages" replaced by the
enriched rows (every input key kept, plus index, dir, kind, vs_first / vs_previous ratios,
accuracy_delta_pt, pareto, illusions, curves, ...) and a "report" section (format, pareto fronts,
illusions, warnings); reading it back gives the same report.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from condense.core.io import atomic_write_text, write_json_strict
from condense.report import plots
from condense.report.data import REPORT_NAME, Run, load_run
from condense.report.html import render_html
from condense.report.illusions import Illusion, detect
from condense.report.markdown import render_markdown
from condense.report.summary import Report, enriched_json, summarize


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    json: Path
    illusions: int = 0  # illusory gains named in the report

    def to_dict(self) -> dict[str, Any]:
        return {"html": str(self.html), "markdown": str(self.markdown), "json": str(self.json), "illusions": self.illusions}


def _out_paths(run: Run, out: str | Path | None) -> tuple[Path, Path, Path]:
    if out is None:
        folder, stem = run.root, "report"
    else:
        o = Path(out)
        folder, stem = (o.parent, o.stem) if o.suffix.lower() in (".html", ".htm") else (o, "report")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}.html", folder / f"{stem}.md", folder / (REPORT_NAME if stem == "report" else f"{stem}.json")


def draw_plots(rep: Report) -> dict[str, Any]:
    """Every figure of the report, keyed by Plot.key."""
    out = [plots.size_plot(rep.stages, rep.fronts, rep.scale),
           plots.latency_plot(rep.stages, rep.runtimes, rep.batches, rep.fronts, rep.scale)]
    for st in rep.stages:
        out += [plots.per_layer_plot(st), plots.curves_plot(st), plots.sensitivity_plot(st)]
    return {p.key: p for p in out if p is not None}


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """The enriched report as a dict (what report.json will hold), without writing anything."""
    return enriched_json(summarize(load_run(run_dir)))


def write_report(run_dir: str | Path, out: str | Path | None = None, *, plots: bool = True) -> ReportPaths:
    """Read the run folder `run_dir`, write report.html, report.md and report.json; return their paths.

    `out`: a folder for the three files (default: the run folder), or an .html path (the .md and
    .json files take the same stem next to it). `plots=False` skips the figures (tables and
    illusions only; much faster). Raises InputFileError when there is nothing to read.
    """
    run = load_run(run_dir)
    rep = summarize(run)
    html_path, md_path, json_path = _out_paths(run, out)
    figures = draw_plots(rep) if plots else {}
    files = {"html": str(html_path), "markdown": str(md_path), "json": str(json_path)}
    atomic_write_text(html_path, render_html(rep, figures))
    atomic_write_text(md_path, render_markdown(rep))
    data = enriched_json(rep, files)
    data["report"]["plots"] = [p.to_dict() for p in figures.values()]
    write_json_strict(json_path, data)  # NaN / inf as null (warned): report.json parses anywhere
    return ReportPaths(html_path, md_path, json_path, len(rep.illusions))


__all__ = ["Illusion", "ReportPaths", "build_report", "detect", "load_run", "write_report"]
