"""The report as Markdown: the before/after table (exact bytes), illusory gains, Pareto fronts and
per-layer tables. User strings are escaped so they render as text: `|` cannot break a table row and
`<`, `>`, `&` cannot become raw HTML in renderers that allow it."""
from __future__ import annotations

import html as _html
from pathlib import Path
from typing import Any

from condense.report.fmt import DASH, fmt_ms
from condense.report.plots import PER_LAYER_FIELDS, per_layer_fields
from condense.report.records import fp32_label
from condense.report.summary import Report, latency_pass_table


def deployed_cells(d: dict[str, Any]) -> list[str]:
    """One deployed file as table cells (markdown and HTML share them)."""
    agree = d.get("top1_agreement")
    lat = d.get("latency_ms")
    return [Path(str(d.get("path", ""))).name, f"{d.get('format')} {d.get('precision')}", f"{d.get('bytes', 0):,}",
            DASH if agree is None else f"{100 * agree:.1f}%", f"{d.get('max_abs_diff', float('nan')):.2g}",
            str(d.get("runtime")), DASH if lat is None else f"{lat:.3f} ({d.get('threads')} thr)"]


DEPLOYED_HEAD = ["file", "format", "bytes", "top-1 vs torch", "max abs diff", "runtime", "batch-1 p50 ms"]


def md_escape(s: object) -> str:
    """Text safe inside a Markdown table cell or paragraph."""
    text = _html.escape(str(s), quote=False)
    for ch in ("\\", "|", "`", "*", "_", "[", "]", "$"):
        text = text.replace(ch, "\\" + ch)
    return " ".join(text.split())


def _table(head: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(rep: Report) -> str:
    lines = [f"# condense report: {md_escape(rep.run.root.name or rep.run.root)}", "",
             f"{len(rep.stages)} stages · {rep.run.layout} layout · generated {rep.generated}", ""]
    head = ["#", "stage", "kind"] + [c.label for c in rep.columns]
    rows = []
    for i, st in enumerate(rep.stages):
        cells = []
        for c in rep.columns:
            cell = rep.cell(i, c, exact=True)
            cells.append(cell["text"] + (f" ({cell['delta']})" if cell["delta"] else ""))
        rows.append([str(i + 1), md_escape(st.name), md_escape(rep.kinds[i] or "")] + cells)
    lines += ["## Before / after", ""]
    lines += _table(head, rows, ["r", "l", "l"] + ["r"] * len(rep.columns))
    lines += ["", "In brackets: the change against stage 1 (accuracy in percentage points, everything else as a "
              "ratio). Bytes are files on disk; latency is the median in ms per call.", ""]

    lp = latency_pass_table(rep)
    if lp is not None:
        sentence, head_lp, rows_lp = lp
        lines += ["## Latency: deployed files timed together", "", md_escape(sentence), ""]
        lines += _table([md_escape(h) for h in head_lp], [[md_escape(c) for c in r] for r in rows_lp],
                        ["l", "l"] + ["r"] * (len(head_lp) - 2)) + [""]

    lines += ["## Illusory gains", ""]
    if rep.illusions:
        lines += [f"- **{md_escape(x.stage)}** ({x.code}): {md_escape(x.message)}" for x in rep.illusions]
    else:
        lines.append("None detected.")
    lines.append("")
    if rep.run.warnings:
        lines += ["## Warnings", ""] + [f"- {md_escape(w)}" for w in rep.run.warnings] + [""]

    if rep.fronts:
        lines += ["## Pareto fronts", ""]
        for key, idx in rep.fronts.items():
            names = ", ".join(f"{i + 1}. {md_escape(rep.stages[i].name)}" for i in idx)
            lines.append(f"- {md_escape(rep.front_labels[key])}: {names}")
        lines.append("")

    for i, st in enumerate(rep.stages):
        fields = per_layer_fields(st)
        int8 = st.int8_vs_fp32 or {}
        batches = int8.get("batches") if isinstance(int8.get("batches"), dict) else None
        if not (fields or st.notes or batches or st.deployed):
            continue
        lines += [f"## {i + 1}. {md_escape(st.name)}", ""]
        lines += [f"- {md_escape(n)}" for n in st.notes] + ([""] if st.notes else [])
        if st.deployed:
            lines += _table(DEPLOYED_HEAD, [deployed_cells(d) for d in st.deployed],
                            ["l", "l", "r", "r", "r", "l", "r"]) + [""]
        if batches:
            rows = [[str(b), fmt_ms(r.get("fp32_ms")), fmt_ms(r.get("int8_ms")),
                     f"{r['int8_ms'] / r['fp32_ms']:.2f}" if r.get("fp32_ms") and r.get("int8_ms") is not None else DASH]
                    for b, r in batches.items() if isinstance(r, dict)]
            ref = fp32_label(int8)
            lines += _table(["batch", f"{ref} (ms)", "int8 (ms)", f"int8 / {ref}"], rows, ["r"] * 4) + [""]
        if fields:
            labels = dict(PER_LAYER_FIELDS)
            rows = []
            for name, v in st.per_layer.items():
                vals = []
                for f in fields:
                    x = v.get(f)
                    vals.append(DASH if not isinstance(x, int | float) or isinstance(x, bool)
                                else (f"{100 * x:.1f}%" if f == "sparsity" else f"{x:g}"))
                rows.append([md_escape(name)] + vals)
            lines += _table(["layer"] + [labels[f] for f in fields], rows, ["l"] + ["r"] * len(fields)) + [""]
    return "\n".join(lines).rstrip() + "\n"
