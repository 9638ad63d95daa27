"""Choose a transformer int8 setting by measurement, not by rule of thumb.

`choose_transformer_int8(model, calibration, heldout)` exports the model once, builds every
candidate `TransformerInt8Config` from that one export (and one fusion, one calibration pass),
and measures each on the held-out data against the fp32 ONNX file: mean / min / 1st-percentile
cosine and top-k neighbour overlap of the outputs (`compare_embeddings`), bytes on disk, and ONNX
Runtime latency at each batch size (real held-out samples, every session interleaved in a random
order each round in this one process, `threads` intra-op threads, medians of wall and CPU time;
`interleaved_latency`). The winner is the best candidate by `objective` among those whose mean
cosine reaches `min_cosine`; the table of all candidates comes with it, so a choice can be read
and checked. Nothing is hard-coded: on another CPU or model another setting may win.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from condense.core.errors import ConfigError
from condense.core.io import atomic_path
from condense.evaluate.timing import interleaved_latency
from condense.export.onnx import onnx_file_bytes, onnx_session, ort_input
from condense.quantize.transformer import (
    TransformerInt8Config,
    TransformerWorkspace,
    agreement,
    batches_of,
    calibration_batches,
    check_hf_model,
    output_rows,
)

OBJECTIVES = ("latency", "throughput", "size", "accuracy")


def default_candidates() -> dict[str, TransformerInt8Config]:
    """The settings worth comparing on a BERT-family encoder (see docs/quantization.md)."""
    return {
        "plain": TransformerInt8Config(fuse=False, outlier_channels=0, smoothquant_alpha=None),
        "plain+outliers+smooth": TransformerInt8Config(fuse=False),
        "fused": TransformerInt8Config(outlier_channels=0, smoothquant_alpha=None),
        "fused+outliers": TransformerInt8Config(smoothquant_alpha=None),
        "fused+outliers+smooth": TransformerInt8Config(),
    }


@dataclasses.dataclass
class TransformerInt8Choice:
    """The chosen setting, its file (when `out_path` was given) and the measured table."""

    chosen: str | None  # None: no candidate reached min_cosine
    config: TransformerInt8Config | None
    path: Path | None
    objective: str
    min_cosine: float
    rows: list[dict[str, Any]]  # one per candidate, in the order given
    fp32: dict[str, Any]  # bytes and latency of the fp32 file(s)
    latency: dict[str, Any]  # threads, repeats, feeds and load average per batch size
    message: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = None if self.config is None else self.config.to_dict()
        d["path"] = None if self.path is None else str(self.path)
        return d

    def table(self) -> str:
        """The candidates as a Markdown table (latency as a multiple of the plain fp32 file)."""
        batches = sorted(self.fp32["latency"], key=int)
        head = ["candidate", "mean cos", "min cos", "top-k overlap", "bytes", "size x"] + \
               [f"bs{b} ms (x fp32)" for b in batches] + ["meets floor"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        fp = self.fp32
        lines.append("| fp32 | 1 | 1 | 1 | " + f"{fp['bytes']:,} | 1 | " +
                     " | ".join(f"{fp['latency'][b]['wall_ms']:.2f}" for b in batches) + " | |")
        for r in self.rows:
            mark = "**" if r["name"] == self.chosen else ""
            lat = " | ".join(f"{r['latency'][b]['wall_ms']:.2f} ({r['latency'][b]['x_fp32']:.2f})" for b in batches)
            lines.append(f"| {mark}{r['name']}{mark} | {r['mean_cosine']:.5f} | {r['min_cosine']:.4f} | "
                         f"{r['topk_overlap']:.3f} | {r['bytes']:,} | {r['size_ratio']:.3f} | {lat}"
                         f"{' | ' if batches else ''}{'yes' if r['meets_floor'] else 'no'} |")
        return "\n".join(lines + ["", self.message])


def _loadavg() -> str:
    p = Path("/proc/loadavg")
    return " ".join(p.read_text().split()[:3]) if p.is_file() else "?"


def _spread(items: list[Any], n: int) -> list[Any]:
    """`n` items evenly spaced over the list (all of them when there are fewer)."""
    if len(items) <= n:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def _pick(rows: list[dict[str, Any]], objective: str, batches: Sequence[int]) -> dict[str, Any] | None:
    ok = [r for r in rows if r["meets_floor"]]
    if not ok:
        return None
    if objective == "size":
        return min(ok, key=lambda r: r["bytes"])
    if objective == "accuracy":
        return max(ok, key=lambda r: r["mean_cosine"])
    b = min(batches) if objective == "latency" else max(batches)
    return min(ok, key=lambda r: r["latency"][b]["wall_ms"])


def choose_transformer_int8(
    model: nn.Module,
    calibration: Any,
    heldout: Any,
    candidates: Mapping[str, TransformerInt8Config | dict[str, Any]] | None = None,
    *,
    min_cosine: float = 0.99,
    objective: str = "latency",
    threads: int = 1,
    latency_batches: Sequence[int] = (1, 32),
    repeats: Mapping[int, int] | int | None = None,
    eval_batch_size: int = 32,
    heldout_samples: int | None = None,
    out_path: str | Path | None = None,
    work_dir: str | Path | None = None,
) -> TransformerInt8Choice:
    """Build each candidate, measure it, return the best one that keeps `min_cosine` (module docstring).

    `calibration` / `heldout`: any data condense takes or batch dicts (`input_ids`,
    `attention_mask`); keep them disjoint. `objective`: "latency" (fastest at the smallest of
    `latency_batches`), "throughput" (fastest at the largest), "size" (fewest bytes) or "accuracy"
    (highest mean cosine). `repeats`: timed rounds per batch size (default max(10, 200 // bs)).
    `out_path`: where to copy the chosen file (atomically). Returns the choice with every
    candidate's row; `chosen` is None, and `message` says so, when none reaches the floor.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"choose_transformer_int8: objective must be one of {OBJECTIVES}, got {objective!r}")
    if not 0.0 < min_cosine <= 1.0:
        raise ConfigError(f"choose_transformer_int8: min_cosine must be in (0, 1], got {min_cosine}")
    if objective in ("latency", "throughput") and not latency_batches:
        raise ConfigError(f"choose_transformer_int8: objective {objective!r} needs latency_batches")
    if any(int(b) < 1 for b in latency_batches) or threads < 1 or eval_batch_size < 1:
        raise ConfigError("choose_transformer_int8: latency_batches, threads and eval_batch_size must be >= 1")
    raw = default_candidates() if candidates is None else dict(candidates)
    if not raw:
        raise ConfigError("choose_transformer_int8: no candidates")
    cands = {str(k): v if isinstance(v, TransformerInt8Config) else
             TransformerInt8Config.from_dict(v, where=f"candidate {k!r}") for k, v in raw.items()}
    check_hf_model(model, "choose_transformer_int8")
    need = [c for c in cands.values() if c.needs_calibration]
    widest = max(need, key=lambda c: c.calibration_samples) if need else TransformerInt8Config(
        outlier_channels=0, smoothquant_alpha=None)
    calib = calibration_batches(widest, calibration)
    batches = list(batches_of(heldout, eval_batch_size, heldout_samples))
    if sum(len(b["attention_mask"] if "attention_mask" in b else next(iter(b.values()))) for b in batches) < 2:
        raise ConfigError("choose_transformer_int8: held-out data needs at least 2 samples")
    bs_list = sorted({int(b) for b in latency_batches})

    parent = Path(work_dir) if work_dir is not None else (Path(out_path).parent if out_path is not None else None)
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".transformer-int8-choice-", dir=parent))
    try:
        ws = TransformerWorkspace(model, work, calibration=calib, opset=next(iter(cands.values())).opset)
        built = {name: ws.build(cfg, work / f"candidate{i}.onnx") for i, (name, cfg) in enumerate(cands.items())}
        fp32 = ws.graph("plain")
        ref = output_rows(onnx_session(fp32), batches)
        rows: list[dict[str, Any]] = []
        for name, res in built.items():
            q = agreement(output_rows(onnx_session(res.path), batches), ref)
            rows.append({"name": name, "label": cands[name].describe(), "config": cands[name].to_dict(),
                         "mean_cosine": q.get("mean_cosine", 1.0), "min_cosine": q.get("min_cosine", 1.0),
                         "p01_cosine": q.get("p01_cosine", 1.0), "topk_overlap": q.get("topk_overlap", 1.0),
                         "max_abs_diff": q["max_abs_diff"], "n": int(len(ref)), "bytes": res.bytes,
                         "size_ratio": res.size_ratio, "meets_floor": q.get("mean_cosine", 1.0) >= min_cosine,
                         "latency": {}, "build": res.to_dict()})

        # latency: every file in one interleaved block per batch size, on real held-out samples
        paths = {"fp32": fp32, **({"fp32 fused": ws.graph("fused")} if any(c.fuse for c in cands.values()) else {}),
                 **{name: res.path for name, res in built.items()}}
        sessions = {k: onnx_session(p, threads) for k, p in paths.items()}
        lat_info: dict[str, Any] = {"threads": threads, "batches": {}}
        fp32_lat: dict[int, dict[str, float]] = {}
        for bs in bs_list:
            n_feeds = max(1, 128 // bs)
            pool = [b for b in batches_of(heldout, bs, heldout_samples)]
            full = [b for b in pool if len(b["input_ids"] if "input_ids" in b else next(iter(b.values()))) == bs]
            feeds = [ort_input(sessions["fp32"], b) for b in _spread(full or pool[:1], n_feeds)]
            reps = repeats if isinstance(repeats, int) else (repeats or {}).get(bs, max(10, 200 // bs))
            load = _loadavg()
            t = interleaved_latency({k: (lambda f, s=s: s.run(None, f)) for k, s in sessions.items()}, feeds,
                                    repeats=int(reps), warmup=2, seed=bs)
            lat_info["batches"][bs] = {"repeats": int(reps), "feeds": len(feeds), "loadavg_before": load,
                                       "loadavg_after": _loadavg(), "results": t}
            fp32_lat[bs] = t["fp32"]
            for r in rows:
                r["latency"][bs] = {**t[r["name"]], "x_fp32": t[r["name"]]["wall_ms"] / t["fp32"]["wall_ms"]}
        del sessions
        best = _pick(rows, objective, bs_list)
        chosen_path = None
        if best is not None and out_path is not None:
            with atomic_path(out_path) as tmp:
                shutil.copyfile(built[best["name"]].path, tmp)
            chosen_path = Path(out_path)
        fused_lat = {bs: lat_info["batches"][bs]["results"]["fp32 fused"] for bs in bs_list if "fp32 fused" in paths}
        fp32_info = {"bytes": onnx_file_bytes(fp32), "latency": fp32_lat, "fused_latency": fused_lat}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if best is None:
        top = max(rows, key=lambda r: r["mean_cosine"])
        msg = (f"no candidate reaches mean cosine {min_cosine} (best: {top['name']} at {top['mean_cosine']:.5f}); "
               "lower the floor, keep more layers in float (ignore=...) or use a larger calibration set")
    else:
        how = {"latency": f"fastest at batch {min(bs_list) if bs_list else '-'}",
               "throughput": f"fastest at batch {max(bs_list) if bs_list else '-'}",
               "size": "smallest file", "accuracy": "highest mean cosine"}[objective]
        lat = "; ".join(f"batch {b}: {best['latency'][b]['x_fp32']:.2f}x fp32" for b in bs_list)
        msg = (f"chose {best['name']} ({best['label']}): {how} among {sum(r['meets_floor'] for r in rows)} of "
               f"{len(rows)} candidates with mean cosine >= {min_cosine}; cosine {best['mean_cosine']:.5f}, "
               f"{best['size_ratio']:.3f}x bytes{'; ' + lat if lat else ''}")
    return TransformerInt8Choice(
        chosen=None if best is None else best["name"], config=None if best is None else cands[best["name"]],
        path=chosen_path, objective=objective, min_cosine=min_cosine, rows=rows, fp32=fp32_info, latency=lat_info,
        message=msg)


__all__ = ["OBJECTIVES", "TransformerInt8Choice", "choose_transformer_int8", "default_candidates"]
