"""The HTML report: one self-contained file (inline CSS, plots as base64 PNG, no scripts).

Rendered by jinja2 with autoescape on, so every user-provided string (stage names, notes, layer
names, recipe text, paths) is escaped. A Content-Security-Policy meta tag allows only inline
styles and data: images, so even a string that slipped through could not run a script or fetch
anything.
"""
from __future__ import annotations

from typing import Any

import jinja2

from condense.report import compare
from condense.report.fmt import fmt_ms
from condense.report.markdown import DEPLOYED_HEAD, deployed_cells
from condense.report.plots import PER_LAYER_FIELDS, Plot, per_layer_fields
from condense.report.records import fp32_label
from condense.report.summary import Report, latency_pass_table
from condense.version import __version__

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>condense report: {{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24; margin: 0; background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 8px 0 2px; } h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 26px 0 6px; } .sub { color: #57606a; margin: 0 0 6px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; } td.l, th.l { text-align: left; }
table.numbers td .d { display: block; font-size: 11px; color: #57606a; }
.better { color: #1a7f37 !important; } .worse { color: #cf222e !important; }
.scroll { overflow-x: auto; }
.illusions { border: 1px solid #d4a72c; background: #fff8c5; border-radius: 6px; padding: 8px 16px; }
.illusions.none { border-color: #8fd19e; background: #dafbe1; }
.illusions li { margin: 6px 0; } .code { font-family: ui-monospace, monospace; font-size: 12px; color: #57606a; }
.warn { color: #9a6700; }
figure { margin: 12px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 12px; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
.tag { display: inline-block; white-space: nowrap; margin-bottom: 2px; background: #ddf4ff; color: #0550ae; border-radius: 10px; padding: 0 8px; font-size: 12px; margin-right: 4px; }
.stage { border-top: 1px dashed #d0d7de; }
</style>
</head>
<body><main>
<h1>condense report</h1>
<p class="sub">{{ run_dir }} · {{ layout }} layout · {{ stages|length }} stage{{ 's' if stages|length != 1 }} · generated {{ generated }} · condense {{ version }}</p>
{% if env %}<p class="sub">{% for k, v in env %}{{ k }} {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}</p>{% endif %}

<h2 id="illusions">Illusory gains</h2>
{% if illusions %}
<div class="illusions"><p><b>{{ illusions|length }} illusory gain{{ 's' if illusions|length != 1 }} detected</b>: a stage looks compressed or faster, but the deployed model is not.</p>
<ul>{% for x in illusions %}<li class="illusion" data-code="{{ x.code }}">{{ x.message }} <span class="code">[{{ x.code }}]</span></li>{% endfor %}</ul></div>
{% else %}
<div class="illusions none"><p>None detected. Checked: masks not removed, fake-quant not converted, compressed artifacts not smaller on disk, int8 slower than fp32, channel counts not a multiple of 8.</p></div>
{% endif %}
{% if warnings %}<ul>{% for w in warnings %}<li class="warn">{{ w }}</li>{% endfor %}</ul>{% endif %}

<h2 id="table">Before / after</h2>
<div class="scroll"><table class="numbers">
<thead><tr><th rowspan="2">#</th><th rowspan="2" class="l">stage</th><th rowspan="2" class="l">kind</th>
{% set ns = namespace(i=0) %}{% for g, n in groups %}{% if g %}<th colspan="{{ n }}">{{ g }}</th>{% else %}<th rowspan="2">{{ columns[ns.i].label }}</th>{% endif %}{% set ns.i = ns.i + n %}{% endfor %}</tr>
<tr>{% for c in columns if c.group %}<th>{{ c.sub }}</th>{% endfor %}</tr></thead>
<tbody>{% for r in rows %}<tr><td>{{ r.n }}</td><td class="l"><a href="#stage-{{ r.n }}">{{ r.name }}</a></td><td class="l">{{ r.kind }}</td>
{% for c in r.cells %}<td title="{{ c.title }}">{{ c.text }}{% if c.delta %}<span class="d {{ c.cls }}">{{ c.delta }}</span>{% endif %}</td>{% endfor %}
</tr>{% endfor %}</tbody>
</table></div>
<p class="sub">Under each number: the change against stage 1 (accuracy in percentage points, everything else as a ratio; ×0.25 means a quarter of stage 1's). Green is better, red is worse. Bytes are files on disk (KiB = 1024 bytes; hover for exact bytes). Latency is the median in milliseconds per call at the batch size shown{% if threads %}, {{ threads }} thread{{ 's' if threads != 1 }}{% endif %}.</p>

{% if latency_pass %}<h3 id="latency-pass">Latency: deployed files timed together</h3>
<p class="sub">{{ latency_pass.sentence }}</p>
<div class="scroll"><table><thead><tr>{% for h in latency_pass.head %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for r in latency_pass.rows %}<tr>{% for v in r %}<td{% if loop.index <= 2 %} class="l"{% endif %}>{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table></div>{% endif %}

{% if fronts %}<h3>Pareto fronts</h3>
<table><thead><tr><th class="l">front (accuracy against)</th><th class="l">stages on it</th></tr></thead><tbody>
{% for f in fronts %}<tr><td class="l">{{ f.label }}</td><td class="l">{% for n, name in f.stages %}<span class="tag">{{ n }}. {{ name }}</span>{% endfor %}</td></tr>{% endfor %}
</tbody></table>{% endif %}

<h2 id="plots">Accuracy against size and latency</h2>
{% for p in main_plots %}<figure><img alt="{{ p.title }}" src="{{ p.data_uri }}"><figcaption>{{ p.title }}. {{ p.caption }}</figcaption></figure>{% endfor %}
{% if not main_plots %}<p class="sub">No stage has both an accuracy and a size or latency to plot.</p>{% endif %}

<h2 id="stages">Stages</h2>
{% for s in stage_sections %}
<section class="stage" id="stage-{{ s.n }}">
<h3>{{ s.n }}. {{ s.name }}</h3>
<p class="sub">{% if s.kind %}kind {{ s.kind }}{% endif %}{% if s.dir %} · {{ s.dir }}{% endif %}{% if s.done is false %} · <span class="warn">not finished (no DONE marker)</span>{% endif %}{% if s.edits %} · edits: {{ s.edits|join(', ') }}{% endif %}</p>
{% if s.illusions %}<ul>{% for x in s.illusions %}<li class="worse">{{ x.message }}</li>{% endfor %}</ul>{% endif %}
{% if s.notes %}<ul>{% for n in s.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
{% if s.deployed %}<table><thead><tr>{% for h in deployed_head %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for r in s.deployed %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>{% endif %}
{% if s.int8 %}<table><thead><tr><th>batch</th><th>{{ s.fp32_label }} (ms)</th><th>int8 (ms)</th><th>int8 / {{ s.fp32_label }}</th></tr></thead><tbody>
{% for r in s.int8 %}<tr><td>{{ r.batch }}</td><td>{{ r.fp32 }}</td><td>{{ r.int8 }}</td><td class="{{ r.cls }}">{{ r.ratio }}</td></tr>{% endfor %}</tbody></table>{% endif %}
{% if s.layer_fields %}<details{% if s.layers|length <= 20 %} open{% endif %}><summary>Per layer ({{ s.layers|length }} layers)</summary>
<div class="scroll"><table><thead><tr><th class="l">layer</th>{% for f in s.layer_fields %}<th>{{ f }}</th>{% endfor %}</tr></thead><tbody>
{% for l in s.layers %}<tr><td class="l">{{ l.name }}</td>{% for v in l.vals %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table></div></details>{% endif %}
{% for p in s.plots %}<figure><img alt="{{ p.title }}: {{ s.name }}" src="{{ p.data_uri }}"><figcaption>{{ p.title }}. {{ p.caption }}</figcaption></figure>{% endfor %}
</section>
{% endfor %}

{% if recipe %}<h2 id="recipe">Recipe</h2><pre>{{ recipe }}</pre>{% endif %}

<h2 id="method">How these numbers were measured</h2>
<p>Size is the bytes of the files on disk (safetensors weights; ONNX files as exported; the int8 ONNX file where one was exported), never parameters × 4. Latency is the median of repeated timed runs after warm-up, per runtime (PyTorch eager, ONNX Runtime) and batch size, on the machine that ran the stage; where the run has an interleaved latency pass, the ONNX Runtime numbers and ratios are that pass's (every deployed file timed against the reference in the same rounds), and a timing whose p90 exceeds twice its median, or taken while the machine's load exceeded its CPUs, is flagged under the illusory gains. A PyTorch int8 simulation (fake-quant) is never shown as a stage's latency. FLOPs count 2 per multiply-add of matmul and convolution for one sample. A point is on a Pareto front when no other stage is both at least as accurate and at least as small (or fast), and strictly better in one of the two.</p>
</main></body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _env_pairs(top: dict[str, Any]) -> list[tuple[str, str]]:
    env = top.get("environment") if isinstance(top.get("environment"), dict) else {}
    pairs = []
    for key in ("torch", "onnxruntime", "cpu", "cpu_count", "threads", "python", "platform"):
        v = env.get(key, top.get(key))
        if v is not None and not isinstance(v, dict | list):
            pairs.append((key, str(v)))
    return pairs


def _int8_rows(d: dict[str, Any] | None) -> list[dict[str, str]]:
    if not isinstance(d, dict):
        return []
    batches = d.get("batches")
    if not isinstance(batches, dict) and isinstance(d.get("latency"), dict):
        batches = d["latency"].get("batches")
    rows = []
    for bs, r in (batches or {}).items():
        if not isinstance(r, dict):
            continue
        f32, i8 = r.get("fp32_ms"), r.get("int8_ms")
        ratio = (i8 / f32) if isinstance(f32, int | float) and isinstance(i8, int | float) and f32 > 0 else None
        rows.append({"batch": str(bs), "fp32": fmt_ms(f32), "int8": fmt_ms(i8),
                     "ratio": "—" if ratio is None else f"{ratio:.2f}",
                     "cls": "" if ratio is None else ("worse" if ratio > 1 else "better")})
    return rows


def _layer_value(field: str, v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "—" if v is None else str(v)
    if field == "sparsity":
        return f"{100 * v:.1f}%"
    return f"{v:g}"


def _latency_pass(rep: Report) -> dict[str, Any] | None:
    t = latency_pass_table(rep)
    return None if t is None else {"sentence": t[0], "head": t[1], "rows": t[2]}


def render_html(rep: Report, plots: dict[str, Plot]) -> str:
    """The report as one HTML string; `plots` maps Plot.key to the drawn figures."""
    stages = rep.stages
    rows = [{
        "n": i + 1, "name": st.name, "kind": rep.kinds[i] or "",
        "cells": [rep.cell(i, c) for c in rep.columns],
    } for i, st in enumerate(stages)]
    sections = []
    for i, st in enumerate(stages):
        fields = per_layer_fields(st)
        labels = dict(PER_LAYER_FIELDS)
        sections.append({
            "n": i + 1, "name": st.name, "kind": rep.kinds[i], "dir": st.dir, "done": st.done,
            "edits": [k for k in dict.fromkeys(e.get("kind") for e in compare.new_edits(st, stages[i - 1] if i else None)) if k],
            "illusions": rep.illusions_of(i), "notes": st.notes, "int8": _int8_rows(st.int8_vs_fp32), "fp32_label": fp32_label(st.int8_vs_fp32),
            "deployed": [deployed_cells(d) for d in st.deployed],
            "layer_fields": [labels[f] for f in fields],
            "layers": [{"name": name, "vals": [_layer_value(f, v.get(f)) for f in fields]}
                       for name, v in st.per_layer.items()] if fields else [],
            "plots": [plots[k] for k in (f"per_layer:{i}", f"curves:{i}", f"sensitivity:{i}") if k in plots],
        })
    threads = rep.run.top.get("threads")
    if threads is None:
        threads = next((st.row.get("threads") for st in stages if isinstance(st.row.get("threads"), int)), None)
    return _ENV.from_string(TEMPLATE).render(
        csp=CSP,
        deployed_head=DEPLOYED_HEAD,
        title=rep.run.root.name or str(rep.run.root),
        run_dir=str(rep.run.root),
        layout=rep.run.layout,
        stages=stages,
        generated=rep.generated,
        version=__version__,
        env=_env_pairs(rep.run.top),
        illusions=rep.illusions,
        warnings=rep.run.warnings,
        columns=rep.columns,
        groups=rep.header_groups(),
        fronts=[{"label": rep.front_labels[k], "stages": [(i + 1, stages[i].name) for i in idx]} for k, idx in rep.fronts.items()],
        rows=rows,
        threads=threads,
        main_plots=[plots[k] for k in ("accuracy_vs_size", "accuracy_vs_latency") if k in plots],
        latency_pass=_latency_pass(rep),
        stage_sections=sections,
        recipe=rep.run.recipe_text,
    )
