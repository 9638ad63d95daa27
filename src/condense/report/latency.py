"""Which latencies a report may state: the run's interleaved ONNX Runtime pass
(`condense.evaluate.timing.onnx_latency_pass`) in place of each stage's own timing, and the
medians flagged unreliable (p90 far above the median, or timed on a loaded machine)."""
from __future__ import annotations

from typing import Any

from condense.report.records import Stage, normalize_latency, num

#: p90 / p50 above this marks a latency unreliable (as `condense.evaluate.timing.MAX_SPREAD`,
#: repeated here so reading a report never imports torch)
MAX_SPREAD = 2.0


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
