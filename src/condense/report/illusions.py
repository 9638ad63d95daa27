"""Illusory gains: where a stage looks compressed but the deployed model is not smaller or faster.

Design principle 9 ("honest numbers"): the report must say so in words. Each detector looks at
measured numbers only (bytes on disk, latencies, parameter counts, edit logs, per-layer channel
counts) and returns plain sentences. Detected:

- `masks_not_removed`: a stage zeroed weights (nonzero_params fell) but its files are not smaller
  than its predecessor's, or it still carries masks / parametrizations.
- `fake_quant_not_converted`: a quantized stage whose safetensors file is not smaller than its fp32
  predecessor's, with no int8 ONNX file in it or in any later stage: the quantization is only simulated.
- `not_smaller_on_disk`: a compressing stage (prune, quantize, factorize, distill, tune) whose
  smallest file is not smaller than its predecessor's smallest file.
- `int8_slower`: an int8 model that is slower than the fp32 one in ONNX Runtime on this machine.
- `channels_not_multiple_of_8`: layers left with channel counts that are not a multiple of 8.

Stage names are quoted with typographic quotes (“ ”) so sentences survive HTML escaping intact.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from condense.report.compare import (
    CHANNEL_EDITS,
    COMPRESS_KINDS,
    MASK_EDITS,
    UNMASK_EDITS,
    is_quantized,
    new_edits,
    smallest_bytes,
    stage_kind,
)
from condense.report.records import Stage, fp32_label, num

MIN_ZERO_FRACTION = 0.01  # zeros below 1% of the parameters are not a pruning claim
CHANNEL_MULTIPLE = 8
MAX_LISTED = 6


@dataclasses.dataclass
class Illusion:
    stage: str
    stage_index: int
    code: str
    message: str
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _q(name: str) -> str:
    return f"“{name}”"


def _b(x: float | None) -> str:
    return "?" if x is None else f"{int(x):,} bytes"


def _zero_fraction(st: Stage) -> float | None:
    p, nz = st.metric("params"), st.metric("nonzero_params")
    if p is None or nz is None or p <= 0:
        return None
    return max(0.0, 1.0 - nz / p)


def _truthy(v: Any) -> bool:
    if isinstance(v, list | dict):
        return len(v) > 0
    return bool(v) and v not in ("false", "False", "0", "no")


def masks_not_removed(st: Stage, prev: Stage | None) -> Illusion | None:
    zf = _zero_fraction(st)
    prev_zf = _zero_fraction(prev) if prev is not None else None
    new_zeros = zf is not None and zf >= MIN_ZERO_FRACTION and (prev_zf is None or zf - prev_zf >= MIN_ZERO_FRACTION)
    ev: dict[str, Any] = {"zero_fraction": zf}
    parts: list[str] = []
    if new_zeros and prev is not None:
        pairs = [(k, st.metric(k), prev.metric(k)) for k in ("bytes_safetensors", "bytes_onnx")]
        pairs = [(k, a, b) for k, a, b in pairs if a is not None and b is not None]
        if pairs and all(a >= b for _k, a, b in pairs):
            ev.update({k: a for k, a, _ in pairs}, previous_stage=prev.name, **{f"previous_{k}": b for k, _a, b in pairs})
            sizes = "; ".join(f"{'safetensors' if k == 'bytes_safetensors' else 'ONNX'} {_b(a)} vs {_b(b)}" for k, a, b in pairs)
            parts.append(
                f"Stage {_q(st.name)} set {100 * zf:.1f}% of its parameters to zero "  # type: ignore[operator]
                f"({int(st.metric('params') - st.metric('nonzero_params')):,} of {int(st.metric('params')):,}), "  # type: ignore[operator]
                f"but its files are not smaller than those of {_q(prev.name)} ({sizes}): the pruned weights are still stored "
                "as dense zeros (masks not removed), so this saves no bytes on disk and no time in dense kernels."
            )
    # Masks still attached: an explicit flag, or a prune_masks edit never followed by prune_unmask.
    masked_flag = _truthy(st.flags.get("masked")) or _truthy(st.flags.get("parametrizations"))
    open_masks = False
    for kind in st.edit_kinds:
        if kind in MASK_EDITS:
            open_masks = True
        elif kind in UNMASK_EDITS:
            open_masks = False
    if masked_flag or open_masks:
        ev["masks_attached"] = True
        parts.append(
            f"Stage {_q(st.name)} still carries pruning masks (parametrizations): its weights are dense tensors "
            "multiplied by a mask at every call, which costs memory and time; the masks were never made "
            "permanent and the zeroed weights never removed."
        )
    if not parts:
        return None
    return Illusion(st.name, st.index, "masks_not_removed", " ".join(parts), ev)


def _has_int8_onnx(st: Stage) -> bool:
    return st.bytes_onnx_int8 is not None or bool(st.int8_vs_fp32) or any("int8" in rt.lower() for rt in st.latency)


def fake_quant_not_converted(st: Stage, fp32_prev: Stage | None, kind: str | None,
                             later: Sequence[Stage] = ()) -> Illusion | None:
    """`later`: the stages after this one; an int8 ONNX export there converts this stage's model
    (quantize, then export), so this stage is a step of the chain, not an illusion."""
    if fp32_prev is None or not is_quantized(st, kind) or _has_int8_onnx(st) or any(_has_int8_onnx(x) for x in later):
        return None
    a, b = st.metric("bytes_safetensors"), fp32_prev.metric("bytes_safetensors")
    if a is None or b is None or a < b:
        return None
    return Illusion(
        st.name, st.index, "fake_quant_not_converted",
        f"Stage {_q(st.name)} is quantized only in simulation (fake-quant not converted): its weights are still "
        f"stored in floating point ({_b(a)} of safetensors vs {_b(b)} for the fp32 {_q(fp32_prev.name)}) and "
        "no int8 ONNX file was exported, so the quantization saves no bytes and no time yet; export it to int8 "
        "ONNX (or pack the weights) to get a real int8 model.",
        {"bytes_safetensors": a, "fp32_stage": fp32_prev.name, "fp32_bytes_safetensors": b},
    )


def _reference(st: Stage, earlier: Sequence[Stage], kinds: Sequence[str | None], kind: str | None) -> Stage | None:
    """What a stage compresses: its predecessor; for a distilled student, its teacher (the row's
    "teacher" stage name, else the latest train / pretrain stage, else the first stage)."""
    if not earlier:
        return None
    source = st.row.get("from")  # the runner records each stage's input stage
    if kind != "distill" and isinstance(source, str):
        named_source = next((s for s in reversed(earlier) if s.name == source), None)
        if named_source is not None:
            return named_source
    if kind != "distill":
        return earlier[-1]
    teacher = st.row.get("teacher")
    named = next((s for s in reversed(earlier) if isinstance(teacher, str) and s.name == teacher), None)
    trained = next((s for s, k in zip(reversed(earlier), reversed(kinds[: len(earlier)]), strict=True) if k in ("train", "pretrain")), None)
    return named or trained or earlier[0]


def not_smaller_on_disk(st: Stage, prev: Stage | None, kind: str | None) -> Illusion | None:
    """`prev` is the stage it compresses (see `_reference`)."""
    if prev is None or kind not in COMPRESS_KINDS:
        return None
    a, b = smallest_bytes(st), smallest_bytes(prev)
    if a is None or b is None or a < b:
        return None
    return Illusion(
        st.name, st.index, "not_smaller_on_disk",
        f"Stage {_q(st.name)} ({kind}) is meant to compress, but none of its files is smaller on disk than "
        f"those of {_q(prev.name)}: its smallest file is {_b(a)}, against {_b(b)} for {_q(prev.name)}.",
        {"kind": kind, "smallest_bytes": a, "previous_stage": prev.name, "previous_smallest_bytes": b},
    )


def _int8_fp32_pairs(st: Stage, fp32_prev: Stage | None, quantized: bool) -> tuple[list[tuple[int, float, float]], str]:
    """(batch, int8 ms, fp32 ms) pairs from the best available evidence, and where they came from."""
    d = st.int8_vs_fp32
    if isinstance(d, dict):
        batches = d.get("batches")
        if not isinstance(batches, dict) and isinstance(d.get("latency"), dict):
            batches = d["latency"].get("batches")
        if isinstance(batches, dict):
            pairs = []
            for bs, row in batches.items():
                if isinstance(row, dict) and row.get("reliable") is False:
                    continue  # unreliable after its re-measure: no gain or loss is claimed from it
                if isinstance(row, dict) and num(row.get("int8_ms")) is not None and num(row.get("fp32_ms")) is not None:
                    pairs.append((int(bs), float(row["int8_ms"]), float(row["fp32_ms"])))
            if pairs:
                what = "" if fp32_label(d) == "fp32" else "; fp32 here is the quantized model's BN-folded float twin"
                return sorted(pairs), f"measured side by side with the same ONNX Runtime settings{what}"
    for rt, by in st.latency.items():
        if "int8" not in rt.lower():
            continue
        base = re.sub(r"[_\-.: ]?int8", "", rt, flags=re.I)
        fp32_rt = next((c for c in (base, re.sub("int8", "fp32", rt, flags=re.I)) if c in st.latency and c != rt), None)
        if fp32_rt is None:
            continue
        pairs = [(b, v, st.latency[fp32_rt][b]) for b, v in by.items()
                 if v is not None and st.latency[fp32_rt].get(b) is not None]
        if pairs:
            return sorted(pairs), f"{rt} against {fp32_rt} in the same stage"  # type: ignore[arg-type]
    if quantized and st.bytes_onnx_int8 is not None and fp32_prev is not None:
        mine, theirs = st.latency.get("onnxruntime", {}), fp32_prev.latency.get("onnxruntime", {})
        pairs = [(b, v, theirs[b]) for b, v in mine.items() if v is not None and theirs.get(b) is not None
                 and ("onnxruntime", b) not in st.unreliable | fp32_prev.unreliable]
        if pairs:
            together = all(b in st.pass_ratios and b in fp32_prev.pass_ratios for b, _, _ in pairs)
            how = ", timed together in the run's interleaved latency pass" if together else ", each timed on its own"
            return sorted(pairs), f"its int8 ONNX against the fp32 ONNX of {_q(fp32_prev.name)}{how}"  # type: ignore[arg-type]
    return [], ""


def int8_slower(st: Stage, fp32_prev: Stage | None, quantized: bool) -> Illusion | None:
    pairs, source = _int8_fp32_pairs(st, fp32_prev, quantized)
    slower = [(b, i8, f32) for b, i8, f32 in pairs if f32 > 0 and i8 > f32]
    if not slower:
        return None
    detail = "; ".join(f"at batch {b} it takes {i8:.3f} ms against {f32:.3f} ms in fp32, {i8 / f32:.2f}x slower"
                       for b, i8, f32 in slower)
    return Illusion(
        st.name, st.index, "int8_slower",
        f"Stage {_q(st.name)}: the int8 model is slower than fp32 on this machine in ONNX Runtime: {detail} "
        f"({source}). On this CPU, at these layer sizes, int8 kernels do not pay off: the int8 file only buys size.",
        {"slower": [{"batch": b, "int8_ms": i8, "fp32_ms": f32} for b, i8, f32 in slower], "source": source},
    )


def _channels(st: Stage, prev: Stage | None) -> dict[str, int]:
    """Channel counts this stage set: per_layer 'channels', else the kept indices of its new prune_channels edits."""
    out = {}
    for layer, v in st.per_layer.items():
        c = num(v.get("channels"))
        if c is not None:
            out[layer] = int(c)
    if out:
        return out
    for e in new_edits(st, prev):
        if e.get("kind") in CHANNEL_EDITS:
            for g in (e.get("params") or {}).get("groups") or []:
                if isinstance(g, dict) and isinstance(g.get("keep"), list):
                    out[str(g.get("root"))] = len(g["keep"])
    return out


def channels_not_multiple_of_8(st: Stage, prev: Stage | None) -> Illusion | None:
    prev_ch = {layer: int(num(v.get("channels")) or -1) for layer, v in prev.per_layer.items()} if prev else {}
    bad = {layer: c for layer, c in _channels(st, prev).items() if c % CHANNEL_MULTIPLE and prev_ch.get(layer) != c}
    if not bad:
        return None
    items = list(bad.items())
    listed = ", ".join(f"{layer}: {c}" for layer, c in items[:MAX_LISTED]) + (f", and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
    targets = ", ".join(str(-(-c // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE) for _l, c in items[:MAX_LISTED])
    n = len(items)
    return Illusion(
        st.name, st.index, "channels_not_multiple_of_8",
        f"Stage {_q(st.name)} leaves {n} layer{'s' if n != 1 else ''} with a channel count that is not a multiple of "
        f"{CHANNEL_MULTIPLE} ({listed}). Vectorized CPU kernels work on blocks of {CHANNEL_MULTIPLE} channels or more, "
        f"so such layers may run no faster than at the next multiple ({targets}); round the counts to a multiple of "
        f"{CHANNEL_MULTIPLE}.",
        {"layers": bad},
    )


def detect(stages: Sequence[Stage]) -> list[Illusion]:
    """Every illusory gain found, in stage order."""
    found: list[Illusion] = []
    kinds = [stage_kind(st, stages[i - 1] if i else None) for i, st in enumerate(stages)]
    quant = [is_quantized(st, k) for st, k in zip(stages, kinds, strict=True)]
    for i, st in enumerate(stages):
        prev = stages[i - 1] if i else None
        fp32_prev = next((stages[j] for j in range(i - 1, -1, -1) if not quant[j]), None)
        mine = [
            masks_not_removed(st, prev),
            fake_quant_not_converted(st, fp32_prev, kinds[i], stages[i + 1:]),
        ]
        if not any(mine):
            mine.append(not_smaller_on_disk(st, _reference(st, stages[:i], kinds, kinds[i]), kinds[i]))
        mine += [int8_slower(st, fp32_prev, quant[i]), channels_not_multiple_of_8(st, prev)]
        found += [x for x in mine if x is not None]
    return found
