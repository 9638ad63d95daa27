"""The report's figures, drawn with matplotlib's Agg canvas and returned as base64 PNG data URIs.

No pyplot and no global backend switch: each figure is a bare `Figure`, so drawing a report never
changes the caller's matplotlib state and works without a display. Stages are labelled by their
number in the table (1, 2, ...) so user-provided names never reach matplotlib's text parser;
per-layer names are escaped for mathtext.
"""
from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Sequence
from typing import Any

from condense.report.compare import (
    QUALITY_LABELS,
    front_cost,
    onnx_deployed_bytes,
    quality,
    quality_key,
)
from condense.report.records import Stage, num

DPI = 100
MAX_LINES = 12  # sensitivity curves drawn per figure (the most sensitive layers)
MAX_BARS = 60  # per-layer bars drawn per panel
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
FRONT_COLOR = "#d62728"


@dataclasses.dataclass
class Plot:
    key: str
    title: str
    caption: str
    data_uri: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "caption": self.caption}


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mpl_text(s: str, limit: int = 40) -> str:
    """A user string made safe for matplotlib text: `$` would start mathtext; long names are cut."""
    s = str(s)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("$", r"\$")


def color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _log_axis(ax: Any) -> None:
    """Log x axis with plain labels at 1, 2, 5 x 10^k and no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = ax.get_xlim()
    if hi / lo < 3:  # less than half a decade: widen so at least one labelled tick shows
        mid = (lo * hi) ** 0.5
        ax.set_xlim(mid / 2, mid * 2)


def quality_axis(stages: Sequence[Stage], scale: float) -> tuple[str | None, float, str]:
    """(metric key, factor, axis label) of what the scatter plots put on the y axis: accuracy in %
    (fractions times 100), or an encoder's mean cosine / a decoder's token agreement as they are."""
    key = quality_key(stages)
    if key == "accuracy" or key is None:
        return key, scale, "accuracy (%)" if scale == 100 else "accuracy"
    return key, 1.0, QUALITY_LABELS[key]


def _scatter_panel(ax: Any, stages: Sequence[Stage], key: str, front: Sequence[int], scale: float, xlabel: str, log: bool) -> bool:
    qkey, factor, ylabel = quality_axis(stages, scale)
    pts = [(st.index, front_cost(st, key), quality(st, qkey)) for st in stages]
    pts = [(i, c, a * factor) for i, c, a in pts if c is not None and a is not None]
    if pts and "bytes" in xlabel:  # plot sizes in KiB or MiB so log ticks land on round numbers
        unit, div = ("MiB", 1024**2) if max(c for _, c, _ in pts) >= 10 * 1024**2 else ("KiB", 1024)
        pts = [(i, c / div, a) for i, c, a in pts]
        xlabel = xlabel.replace("bytes", unit)
    if not pts:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="#777")
        ax.set_axis_off()
        return False
    seen: dict[tuple[float, float], int] = {}
    for i, c, a in pts:
        ax.scatter([c], [a], s=60, color=color(i), zorder=3, edgecolors="black", linewidths=0.5)
        k = seen[(c, a)] = seen.get((c, a), -1) + 1  # stages on the same spot: labels side by side
        ax.annotate(str(i + 1), (c, a), textcoords="offset points", xytext=(6 + 9 * k, 4), fontsize=9)
    fp = sorted((c, a) for i, c, a in pts if i in set(front))
    if fp:
        xs, ys = zip(*fp, strict=True)
        ax.step(xs, ys, where="post", color=FRONT_COLOR, linestyle="--", linewidth=1.2, zorder=2, label="Pareto front")
        ax.scatter(xs, ys, s=190, facecolors="none", edgecolors=FRONT_COLOR, linewidths=1.6, zorder=4)
        ax.legend(loc="lower right", fontsize=8)
    if log and all(c > 0 for _, c, _ in pts):
        _log_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return True


def size_plot(stages: Sequence[Stage], fronts: dict[str, list[int]], scale: float) -> Plot | None:
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    drew = [
        _scatter_panel(axes[0], stages, "bytes_safetensors", fronts.get("bytes_safetensors", []), scale, "bytes on disk (safetensors)", True),
        _scatter_panel(axes[1], stages, "bytes_onnx_deployed", fronts.get("bytes_onnx_deployed", []), scale,
                       "bytes on disk (ONNX; int8 file where exported)", True),
    ]
    what = quality_axis(stages, scale)[2].replace(" (%)", "")
    axes[0].set_title(f"{what} vs size: safetensors")
    axes[1].set_title(f"{what} vs size: ONNX")
    if not any(drew):
        return None
    has_int8 = any(st.bytes_onnx_int8 is not None for st in stages) and any(onnx_deployed_bytes(st) for st in stages)
    return Plot("accuracy_vs_size", f"{what[0].upper()}{what[1:]} against bytes on disk",
                f"Each point is a stage (numbers as in the table); y: {what}; the dashed line joins the Pareto front "
                "(no other stage is both smaller and better), circled." + (" ONNX sizes use the int8 file where one was exported." if has_int8 else ""),
                _png(fig))


def latency_plot(stages: Sequence[Stage], runtimes: Sequence[str], batches: Sequence[int],
                 fronts: dict[str, list[int]], scale: float) -> Plot | None:
    if not runtimes or not batches:
        return None
    ends = sorted({batches[0], batches[-1]})
    fig = _figure(5 * len(ends), 3.6 * len(runtimes))
    axes = fig.subplots(len(runtimes), len(ends), squeeze=False)
    drew = False
    for r, rt in enumerate(runtimes):
        for c, b in enumerate(ends):
            key = f"latency:{rt}:{b}"
            drew |= _scatter_panel(axes[r][c], stages, key, fronts.get(key, []), scale, f"median latency (ms), batch {b}", True)
            axes[r][c].set_title(f"{mpl_text(rt)}, batch {b}")
    if not drew:
        return None
    what = quality_axis(stages, scale)[2].replace(" (%)", "")
    return Plot("accuracy_vs_latency", f"{what[0].upper()}{what[1:]} against latency",
                f"Median latency per runtime at batch 1 and the largest batch measured; y: {what}; the dashed line "
                "joins the Pareto front (no other stage is both faster and better), circled. ONNX Runtime latencies "
                "come from the run's interleaved pass where it has one.", _png(fig))


PER_LAYER_FIELDS = (("sparsity", "sparsity (fraction of zeros)"), ("bits", "bit width"), ("rank", "rank"), ("channels", "channels"))


def per_layer_fields(stage: Stage) -> list[str]:
    return [f for f, _ in PER_LAYER_FIELDS if any(num(v.get(f)) is not None for v in stage.per_layer.values())]


def per_layer_plot(stage: Stage) -> Plot | None:
    fields = per_layer_fields(stage)
    if not fields:
        return None
    layers = list(stage.per_layer)[:MAX_BARS]
    fig = _figure(3.2 * len(fields) + 1.5, max(2.2, 0.8 + 0.22 * len(layers)))
    axes = fig.subplots(1, len(fields), sharey=True, squeeze=False)[0]
    labels = [mpl_text(n, 28) for n in layers]
    ys = list(range(len(layers)))
    for ax, f in zip(axes, fields, strict=True):
        vals = [num(stage.per_layer[n].get(f)) for n in layers]
        ax.barh(ys, [v or 0 for v in vals], color=[color(i) if v is not None else "#ddd" for i, v in enumerate(vals)], height=0.7)
        ax.set_title(dict(PER_LAYER_FIELDS)[f], fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        if f == "sparsity":
            ax.set_xlim(0, 1)
    axes[0].set_yticks(ys, labels, fontsize=8)
    axes[0].invert_yaxis()
    more = len(stage.per_layer) - len(layers)
    return Plot(f"per_layer:{stage.index}", "Per layer",
                "Per-layer values reported by the stage." + ("" if more <= 0 else f" First {len(layers)} layers drawn ({more} more in the table and JSON)."),
                _png(fig))


def _curve_keys(curves: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    for rec in curves:
        keys += [k for k, v in rec.items() if k not in keys and num(v) is not None]
    acc = [k for k in keys if "acc" in k]
    loss = [k for k in keys if "loss" in k or (k.startswith("train_") and k not in acc)]
    return loss, acc


def curves_plot(stage: Stage) -> Plot | None:
    from matplotlib.ticker import MaxNLocator

    curves = stage.curves
    loss_keys, acc_keys = _curve_keys(curves)
    if not curves or not (loss_keys or acc_keys):
        return None
    fig = _figure(10, 3.4)
    axes = fig.subplots(1, 2)
    epochs = [num(r.get("epoch")) for r in curves]
    xs_all = [e if e is not None else i + 1 for i, e in enumerate(epochs)]
    for ax, keys, ylabel in ((axes[0], loss_keys, "loss"), (axes[1], acc_keys, "accuracy")):
        for j, k in enumerate(keys):
            pts = [(x, num(r.get(k))) for x, r in zip(xs_all, curves, strict=True) if num(r.get(k)) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, color=color(j), label=mpl_text(k))
        if keys:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#777")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("loss per epoch")
    axes[1].set_title("validation accuracy per epoch")
    return Plot(f"curves:{stage.index}", "Training curves", f"{len(curves)} epochs from the stage's metrics.jsonl.", _png(fig))


def sensitivity_plot(stage: Stage) -> Plot | None:
    sens = stage.sensitivity
    if not sens:
        return None

    def drop(pts: list[list[float]]) -> float:
        return pts[0][1] - pts[-1][1]

    layers = sorted(sens, key=lambda n: -drop(sens[n]))[:MAX_LINES]
    fig = _figure(7, 4)
    ax = fig.subplots()
    for j, n in enumerate(layers):
        xs, ys = zip(*sens[n], strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, color=color(j), label=mpl_text(n, 28))
    ax.set_title("accuracy against pruning ratio, per layer")
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    more = len(sens) - len(layers)
    caption = "Accuracy when each layer alone is pruned at each ratio." + (f" The {len(layers)} most sensitive layers are drawn ({more} more in the JSON)." if more > 0 else "")
    return Plot(f"sensitivity:{stage.index}", "Sensitivity", caption, _png(fig))
