"""What the report derives from the measured rows: stage kinds, ratios against the first and the
previous stage, deployed sizes, and Pareto fronts (higher accuracy for less size / latency)."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from condense.report.records import Stage, num

#: edit kinds that mean a quantized model: the quantization methods' records (`QuantMethod.edit_kinds`,
#: BN folding aside), kept here so the report reads JSON without importing torch; a test keeps them equal
QUANT_EDITS = frozenset({"quantize_static", "weight_only", "qat", "qat_convert"})
MASK_EDITS = frozenset({"prune_masks"})
UNMASK_EDITS = frozenset({"prune_unmask"})
CHANNEL_EDITS = frozenset({"prune_channels"})
LOWRANK_PREFIXES = ("lowrank", "low_rank", "factorize", "svd", "tucker")
#: Stage kinds that promise a smaller or faster model.
COMPRESS_KINDS = frozenset({"prune", "quantize", "factorize", "distill", "tune"})
#: Row metrics compared between stages (lower is better for all but accuracy).
SIZE_KEYS = ("params", "nonzero_params", "bytes_safetensors", "bytes_onnx", "bytes_onnx_int8", "flops", "macs")

_NAME_KINDS = (
    (re.compile(r"quant|int8|int4|qat|ptq", re.I), "quantize"),
    (re.compile(r"prun|spars", re.I), "prune"),
    (re.compile(r"factori|low.?rank|svd|tucker", re.I), "factorize"),
    (re.compile(r"distil|\bkd\b", re.I), "distill"),
    (re.compile(r"teacher|baseline|train", re.I), "train"),
)


def new_edits(stage: Stage, prev: Stage | None) -> list[dict[str, Any]]:
    """The edits this stage added: its edit log minus the predecessor's (logs are cumulative)."""
    if prev is None:
        return list(stage.edits)
    n = len(prev.edits)
    if stage.edits[:n] == prev.edits:
        return list(stage.edits[n:])
    return list(stage.edits)


def stage_kind(stage: Stage, prev: Stage | None) -> str | None:
    """The runner's `kind`, else inferred from the edits the stage added, else from its name."""
    if stage.kind:
        return stage.kind
    kinds = [str(e.get("kind")) for e in new_edits(stage, prev)]
    if any(k in QUANT_EDITS for k in kinds):
        return "quantize"
    if any(k in MASK_EDITS | UNMASK_EDITS | CHANNEL_EDITS for k in kinds):
        return "prune"
    if any(k.startswith(LOWRANK_PREFIXES) for k in kinds):
        return "factorize"
    for pattern, kind in _NAME_KINDS:
        if pattern.search(stage.name):
            return kind
    return None


def is_quantized(stage: Stage, kind: str | None) -> bool:
    """True when the stage's model is quantized (really or only simulated)."""
    if kind == "quantize" or stage.flags.get("quantized") or stage.flags.get("fake_quant"):
        return True
    if any(k in QUANT_EDITS for k in stage.edit_kinds):
        return True
    if stage.bytes_onnx_int8 is not None or stage.int8_vs_fp32:
        return True
    return any((num(v.get("bits")) or 32) < 16 for v in stage.per_layer.values())


def onnx_deployed_bytes(stage: Stage) -> int | None:
    """The ONNX file that would ship: the int8 one where it exists, else the fp32 one."""
    if stage.bytes_onnx_int8 is not None:
        return stage.bytes_onnx_int8
    b = stage.metric("bytes_onnx")
    return None if b is None else int(b)


def smallest_bytes(stage: Stage) -> int | None:
    """The smallest file on disk that holds this stage's model (safetensors, ONNX or int8 ONNX)."""
    vals = [v for v in (stage.metric("bytes_safetensors"), stage.metric("bytes_onnx"), stage.bytes_onnx_int8) if v is not None]
    return int(min(vals)) if vals else None


def runtimes_and_batches(stages: Sequence[Stage]) -> tuple[list[str], list[int]]:
    runtimes: list[str] = []
    batches: set[int] = set()
    for st in stages:
        for rt, by in st.latency.items():
            if rt not in runtimes:
                runtimes.append(rt)
            batches.update(b for b, v in by.items() if v is not None)
    return runtimes, sorted(batches)


def latency(stage: Stage, runtime: str, batch: int) -> float | None:
    return stage.latency.get(runtime, {}).get(batch)


def accuracy_scale(stages: Sequence[Stage]) -> float:
    """100 when accuracies are fractions in [0, 1] (the toolkit's convention), 1 when already percent."""
    accs = [a for a in (st.metric("accuracy") for st in stages) if a is not None]
    return 1.0 if accs and max(accs) > 1.0 else 100.0


QUALITY_KEYS = ("accuracy", "mean_cosine", "token_agreement")
#: what each quality metric is called on a plot axis (accuracy in % when stored as a fraction)
QUALITY_LABELS = {"accuracy": "accuracy", "mean_cosine": "mean cosine to the reference",
                  "token_agreement": "token agreement with the reference"}


def quality_key(stages: Sequence[Stage]) -> str | None:
    """The one quality metric a run's stages are compared by: accuracy where any stage has it,
    else an encoder's mean cosine to the reference, else a decoder's token agreement."""
    for key in QUALITY_KEYS:
        if any(st.metric(key) is not None for st in stages):
            return key
    return None


def quality(stage: Stage, key: str | None = None) -> float | None:
    """What a stage keeps: `key` (see `quality_key`), or by default its accuracy, or for an encoder
    (no classes) its mean cosine to the reference model's embeddings, or for a decoder its token
    agreement with the reference's."""
    if key is not None:
        return stage.metric(key)
    for k in QUALITY_KEYS:
        v = stage.metric(k)
        if v is not None:
            return v
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def stage_values(stage: Stage, runtimes: Iterable[str], batches: Iterable[int]) -> dict[str, float | None]:
    """Every comparable number of a stage, keyed like the ratio dicts ("latency:<runtime>:<batch>")."""
    vals: dict[str, float | None] = {"accuracy": stage.metric("accuracy"), "mean_cosine": stage.metric("mean_cosine"),
                                     "topk_overlap": stage.metric("topk_overlap"), "perplexity": stage.metric("perplexity"),
                                     "token_agreement": stage.metric("token_agreement"),
                                     "token_kl": stage.metric("token_kl")}
    for k in SIZE_KEYS:
        vals[k] = float(stage.bytes_onnx_int8) if (k == "bytes_onnx_int8" and stage.bytes_onnx_int8 is not None) else stage.metric(k)
    batches = list(batches)
    for rt in runtimes:
        for b in batches:
            vals[f"latency:{rt}:{b}"] = latency(stage, rt, b)
    return vals


def ratios(stage: Stage, ref: Stage | None, runtimes: Sequence[str], batches: Sequence[int]) -> dict[str, float | None]:
    """value / reference value for every comparable number (None where either is missing)."""
    if ref is None:
        return {}
    a = stage_values(stage, runtimes, batches)
    b = stage_values(ref, runtimes, batches)
    return {k: _ratio(a[k], b.get(k)) for k in a}


def pareto(points: Sequence[tuple[int, float | None, float | None]]) -> list[int]:
    """Indices of the points (index, cost, accuracy) that no other point beats on both: a point is
    dominated when another costs no more, is at least as accurate, and is strictly better in one."""
    pts = [(i, c, a) for i, c, a in points if c is not None and a is not None]
    front = []
    for i, c, a in pts:
        dominated = any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for j, c2, a2 in pts if j != i)
        if not dominated:
            front.append(i)
    return front


def front_keys(runtimes: Sequence[str], batches: Sequence[int]) -> list[tuple[str, str]]:
    """(key, label) of each Pareto front the report marks."""
    keys = [("bytes_safetensors", "size safetensors"), ("bytes_onnx_deployed", "size ONNX")]
    if batches:
        ends = sorted({batches[0], batches[-1]})
        for rt in runtimes:
            for b in ends:
                keys.append((f"latency:{rt}:{b}", f"{rt} latency, batch {b}"))
    return keys


def front_cost(stage: Stage, key: str) -> float | None:
    if key == "bytes_onnx_deployed":
        v = onnx_deployed_bytes(stage)
        return None if v is None else float(v)
    if key.startswith("latency:"):
        rt, b = key[len("latency:"):].rsplit(":", 1)
        return latency(stage, rt, int(b))
    return stage.metric(key)


def fronts(stages: Sequence[Stage], runtimes: Sequence[str], batches: Sequence[int]) -> dict[str, list[int]]:
    """{front key: indices of the stages on that Pareto front}."""
    out = {}
    qkey = quality_key(stages)
    for key, _label in front_keys(runtimes, batches):
        pts = [(st.index, front_cost(st, key), quality(st, qkey)) for st in stages]
        if sum(1 for _, c, a in pts if c is not None and a is not None):
            out[key] = pareto(pts)
    return out
