"""Everything the report shows, computed once from a `Run`: columns, ratios, fronts, illusions.

The HTML and Markdown writers and the enriched JSON all read this one object, so the three
outputs always carry the same numbers.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any

from condense.report import compare
from condense.report.fmt import (
    DASH,
    fmt_acc,
    fmt_bytes,
    fmt_count,
    fmt_int,
    fmt_ms,
    fmt_pt,
    fmt_ratio,
)
from condense.report.illusions import Illusion, detect
from condense.report.records import Run, Stage
from condense.version import __version__

FORMAT = "condense-report/1"


@dataclasses.dataclass(frozen=True)
class Column:
    key: str  # compare.stage_values key
    label: str
    kind: str  # acc | int | bytes | count | ms
    group: str = ""  # header group (the runtime, for latency columns)
    sub: str = ""  # label under the group header


@dataclasses.dataclass
class Report:
    run: Run
    generated: str
    kinds: list[str | None]
    runtimes: list[str]
    batches: list[int]
    columns: list[Column]
    values: list[dict[str, float | None]]
    vs_first: list[dict[str, float | None]]
    vs_previous: list[dict[str, float | None]]
    fronts: dict[str, list[int]]
    front_labels: dict[str, str]
    illusions: list[Illusion]
    scale: float

    @property
    def stages(self) -> list[Stage]:
        return self.run.stages

    def illusions_of(self, index: int) -> list[Illusion]:
        return [x for x in self.illusions if x.stage_index == index]

    def header_groups(self) -> list[tuple[str, int]]:
        """(group label, column count) runs for a two-row table header ("" = a plain column)."""
        out: list[tuple[str, int]] = []
        for c in self.columns:
            if c.group and out and out[-1][0] == c.group:
                out[-1] = (c.group, out[-1][1] + 1)
            else:
                out.append((c.group, 1))
        return out

    def fronts_of(self, index: int) -> list[str]:
        return [self.front_labels[k] for k, idx in self.fronts.items() if index in idx]

    def accuracy_delta_pt(self, index: int) -> float | None:
        a, b = self.values[index].get("accuracy"), self.values[0].get("accuracy")
        return None if a is None or b is None else (a - b) * self.scale

    def format_value(self, col: Column, v: float | None) -> str:
        return {"acc": lambda: fmt_acc(v, self.scale), "cos": lambda: DASH if v is None else f"{v:.4f}",
                "float": lambda: DASH if v is None else f"{v:.4g}",
                "int": lambda: fmt_int(v), "bytes": lambda: fmt_bytes(v),
                "count": lambda: fmt_count(v), "ms": lambda: fmt_ms(v)}[col.kind]()

    def cell(self, index: int, col: Column, exact: bool = False) -> dict[str, str]:
        """{text, title, delta, cls}: the value, its exact form, the change vs the first stage, and
        'better' / 'worse' / '' for colouring."""
        v = self.values[index].get(col.key)
        text = fmt_int(v) if (exact and col.kind in ("bytes", "int", "count")) else self.format_value(col, v)
        title = "" if v is None else (f"{int(v):,}" if col.kind in ("bytes", "int", "count") else f"{v:g}")
        delta, cls = "", ""
        if index > 0 and v is not None:
            if col.kind == "acc":
                d = self.accuracy_delta_pt(index)
                delta = fmt_pt(d)
                cls = "" if d is None or abs(d) < 0.01 else ("better" if d > 0 else "worse")
            elif col.kind == "cos":  # agreement with the reference: the difference, higher is better
                first = self.values[0].get(col.key)
                d = None if first is None else v - first
                delta = "" if d is None else f"{d:+.4f}"
                cls = "" if d is None or abs(d) < 1e-3 else ("better" if d > 0 else "worse")
            else:
                r = self.vs_first[index].get(col.key)
                delta = fmt_ratio(r)
                cls = "" if r is None or abs(r - 1) < 0.01 else ("better" if r < 1 else "worse")  # colour only past 1%
        return {"text": text, "title": title, "delta": delta, "cls": cls}


def _columns(stages: list[Stage], values: list[dict[str, float | None]], runtimes: list[str], batches: list[int]) -> list[Column]:
    cands = [
        Column("accuracy", "accuracy", "acc"),
        Column("mean_cosine", "cosine to teacher", "cos"),
        Column("topk_overlap", "top-10 overlap", "cos"),
        Column("perplexity", "perplexity", "float"),
        Column("token_agreement", "token agreement", "cos"),
        Column("token_kl", "token KL to teacher", "float"),
        Column("params", "params", "count"),
        Column("nonzero_params", "nonzero params", "count"),
        Column("bytes_safetensors", "bytes (safetensors)", "bytes"),
        Column("bytes_onnx", "bytes (ONNX)", "bytes"),
        Column("bytes_onnx_int8", "bytes (ONNX int8)", "bytes"),
        Column("flops", "FLOPs / sample", "count"),
    ]
    cands += [Column(f"latency:{rt}:{b}", f"{rt} b{b} (ms)", "ms", group=f"{rt} latency (ms)", sub=f"batch {b}")
              for rt in runtimes for b in batches]
    return [c for c in cands if any(v.get(c.key) is not None for v in values)]


def summarize(run: Run) -> Report:
    stages = run.stages
    kinds = [compare.stage_kind(st, stages[i - 1] if i else None) for i, st in enumerate(stages)]
    runtimes, batches = compare.runtimes_and_batches(stages)
    values = [compare.stage_values(st, runtimes, batches) for st in stages]
    first = stages[0]
    return Report(
        run=run,
        generated=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        kinds=kinds,
        runtimes=runtimes,
        batches=batches,
        columns=_columns(stages, values, runtimes, batches),
        values=values,
        vs_first=[compare.ratios(st, first, runtimes, batches) if i else {} for i, st in enumerate(stages)],
        vs_previous=[compare.ratios(st, stages[i - 1], runtimes, batches) if i else {} for i, st in enumerate(stages)],
        fronts=compare.fronts(stages, runtimes, batches),
        front_labels=dict(compare.front_keys(runtimes, batches)),
        illusions=detect(stages),
        scale=compare.accuracy_scale(stages),
    )


def latency_pass_table(rep: Report) -> tuple[str, list[str], list[list[str]]] | None:
    """(sentence, header, rows) for the run's interleaved latency pass, or None without one: every
    timed file's median, its ratio to the reference and p90 / median, per batch size."""
    lp = rep.run.top.get("latency_pass")
    if not isinstance(lp, dict) or not isinstance(lp.get("batches"), dict) or not lp["batches"]:
        return None
    batches = sorted(lp["batches"].items(), key=lambda kv: int(kv[0]))
    ref = str(lp.get("reference"))
    files = lp.get("files") if isinstance(lp.get("files"), dict) else {}
    head = ["stage", "file"]
    for b, _res in batches:
        head += [f"b{b} median (ms)", f"b{b} × {ref}", f"b{b} p90 / median"]
    rows = []
    for st in rep.stages:
        if not any(st.name in (res.get("timings") or {}) for _b, res in batches if isinstance(res, dict)):
            continue
        row = [st.name, str(files.get(st.name, ""))]
        for _b, res in batches:
            t = (res.get("timings") or {}).get(st.name) if isinstance(res, dict) else None
            r = (res.get("ratios") or {}).get(st.name) if isinstance(res, dict) else None
            if not isinstance(t, dict):
                row += [DASH] * 3
                continue
            p50, p90 = t.get("wall_ms"), t.get("p90_ms")
            spread = f"{p90 / p50:.2f}" if isinstance(p50, int | float) and isinstance(p90, int | float) and p50 > 0 else DASH
            row += [fmt_ms(p50), DASH if not isinstance(r, int | float) else f"{r:.2f}", spread]
        rows.append(row)
    verdicts = []
    for b, res in batches:
        if not isinstance(res, dict):
            continue
        n = res.get("measured", 1)
        again = f" (measured {n} times: the first pass was unreliable)" if isinstance(n, int) and n > 1 else ""
        verdicts.append(f"batch {b}: {'reliable' if res.get('reliable') is not False else 'UNRELIABLE'}{again}")
    threads = lp.get("threads")
    sentence = (f"Every stage's deployed ONNX file was timed against {ref}'s in one ONNX Runtime pass, interleaved "
                f"(all files on the same input each round, in a new random order){'' if threads is None else f', {threads} thread(s)'}. "
                "The ONNX Runtime latency columns and their ratios come from this pass. A pass is unreliable when a "
                "file's p90 is more than twice its median or the machine's load exceeded its CPUs; it is then "
                "measured once more before any gain or loss is stated. " + "; ".join(verdicts) + ".")
    return sentence, head, rows


def _clean(o: Any) -> Any:
    """JSON-safe: NaN / inf become None, tuples lists, keys strings."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def enriched_json(rep: Report, files: dict[str, str] | None = None) -> dict[str, Any]:
    """The input report.json (or {}) with every stage row enriched and a `report` section added."""
    rows = []
    for i, st in enumerate(rep.stages):
        derived = {
            "stage": st.name,
            "index": i + 1,
            "dir": st.dir,
            "kind": rep.kinds[i],
            "done": st.done,
            "per_layer": st.per_layer or None,
            "sensitivity": st.sensitivity or None,
            "int8_vs_fp32": st.int8_vs_fp32,
            "bytes_onnx_int8": st.bytes_onnx_int8,
            "bytes_onnx_deployed": compare.onnx_deployed_bytes(st),
            "accuracy_delta_pt": rep.accuracy_delta_pt(i),
            "curves": st.curves or None,
        }
        rows.append({
            **st.listing,
            **st.row,
            **_drop_none(derived),
            "notes": st.notes,
            "vs_first": _drop_none(rep.vs_first[i]),
            "vs_previous": _drop_none(rep.vs_previous[i]),
            "pareto": [k for k, idx in rep.fronts.items() if i in idx],
            "illusions": [x.message for x in rep.illusions_of(i)],
        })
    out = {k: v for k, v in rep.run.top.items() if k not in ("stages", "report")}
    out["stages"] = rows
    out["report"] = {
        "format": FORMAT,
        "generated": rep.generated,
        "condense_version": __version__,
        "run_dir": str(rep.run.root),
        "layout": rep.run.layout,
        "runtimes": rep.runtimes,
        "batch_sizes": rep.batches,
        "accuracy_unit": "fraction" if rep.scale == 100 else "percent",
        "ratios": "value / value of the first stage (vs_first) or of the previous stage (vs_previous); "
                  "accuracy_delta_pt is the difference in percentage points",
        "pareto": {k: [rep.stages[i].name for i in idx] for k, idx in rep.fronts.items()},
        "illusions": [x.to_dict() for x in rep.illusions],
        "warnings": rep.run.warnings,
        "files": files or {},
    }
    return _clean(out)
