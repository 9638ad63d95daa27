"""Quantization of the digits teacher CNN: accuracy over seeds, and int8 latency in onnxruntime.

Data: scikit-learn digits with condense's FIXED split (seed 0: 1295 train / 143 val / 359 test);
the 5 seeds change the teacher's initialisation and batch order only. One test sample = 0.28 pt.
Teacher: `cnn` defaults (width 32, 3 stages x 2 conv-BN-ReLU, GAP, Linear; ~290K parameters),
AdamW 3e-3, cosine, 20 epochs, best validation epoch.

Per seed:
* fp32;
* static int8 (per-channel symmetric int8 weights, per-tensor uint8 activations, BN folded, bias
  correction, 512 calibration samples) with each activation observer; accuracy of the PyTorch
  simulation AND of the int8 ONNX file run by onnxruntime;
* 4-bit weights PTQ: static w4a8 (first conv and classifier at 8 bits), minmax and MSE weight ranges;
* QAT with LSQ (learned step sizes), distilling the float model (alpha 0.9, T 4): 8-bit weights
  (3 epochs) and 2-bit weights on the five inner convs (10 epochs); BN frozen half-way, steps frozen
  for the last epoch; converted (BN folded) and run as int8 ONNX;
* mixed precision: per-layer weight bits in {8, 4, 2} from measured sensitivity (validation loss
  increase with one layer lowered), solved under a packed-weight budget (50% and 30% of the int8
  weight bytes) with `condense.quantize.mixed.solve_bits`; compared with uniform 4- and 2-bit weights.

Latency (seed 0 models, onnxruntime CPU, ORT_ENABLE_ALL unless said otherwise): fp32 ONNX vs int8
variants (uint8 / int8 activations, first conv kept in float, the dynamic ConvInteger path, ORT
layout optimisations off) at batch 1 and 256, intra-op threads 1 and 2. Sessions are timed in
randomly interleaved order so machine load hits all alike; medians of wall time, plus medians of
the calling thread's CPU time at 1 thread (less sensitive to other processes on shared cores) and
an IOBinding run at batch 1. The load average is recorded before each block. Then a per-node ORT
profile at batch 256 and a per-layer cost at batch 1 (networks cut after layer k; min over runs).

    python benchmarks/quant_digits.py [--seeds 5] [--epochs 20] [--json benchmarks/results/quant_digits.json]

CPU schemes (`--schemes-only`): per seed, the three static int8 encodings of
`condense.quantize.schemes` (8-bit U8S8, 8-bit stored as U8U8, 7-bit U8S8) with simulation and
ONNX Runtime accuracy, agreement with the simulation on this CPU and on emulated AVX2 kernels
(QEMU, when installed), bytes and latency on this CPU; the CPU's model and flags are recorded.

    python benchmarks/quant_digits.py --schemes-only [--seeds 5] --json benchmarks/results/quant_digits_schemes.json
"""
from __future__ import annotations

import argparse
import collections
import copy
import gc
import json
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.cpu import cpu_record
from condense.core.seed import seed_everything
from condense.data import load_dataset
from condense.distill import DistillConfig, distill_fit
from condense.evaluate import evaluate
from condense.models import build_model
from condense.quantize import QuantizeConfig, export_int8_onnx, quant_wrappers, quantize
from condense.quantize.dynamic import quantize_dynamic_onnx
from condense.quantize.graph.onnx_int8 import interleaved_latency
from condense.quantize.modules.mixed import solve_bits
from condense.quantize.modules.qat import (
    FreezeBatchNormCallback,
    FreezeObserversCallback,
    QATConfig,
    prepare_qat,
)
from condense.quantize.modules.qat_convert import convert_qat
from condense.train import TrainConfig, train_model

OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "entropy")
FIRST_CONV = "features.0.0.conv"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def acc(model_or_path: Any, data: Any) -> float:
    return 100.0 * evaluate(model_or_path, data, threads=1)["accuracy"]


# -- accuracy part ---------------------------------------------------------------------------------
def train_teacher(splits: Any, seed: int, epochs: int) -> nn.Module:
    seed_everything(seed)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10)
    cfg = TrainConfig(epochs=epochs, lr=3e-3, batch_size=64, progress="off", seed=seed)
    return train_model(model, splits.train, cfg, splits.val).model.eval()


def int8_onnx(qmodel: nn.Module, splits: Any, path: Path, **kw: Any) -> dict[str, Any]:
    res = export_int8_onnx(qmodel, splits.test.inputs[:1], path, heldout=splits.test.inputs, threads=1, **kw)
    return {"ort": acc(str(path), splits.test), "agreement": res.top1_agreement, "bytes": res.bytes,
            "fp32_bytes": res.fp32_bytes, "size_ratio": res.size_ratio}


def qat(teacher: nn.Module, splits: Any, seed: int, bits: int, epochs: int, lr: float) -> nn.Module:
    seed_everything(seed)
    prepared = prepare_qat(teacher, QATConfig(bits=bits, act_bits=8, first_last_bits=8),
                           calibration=splits.train.inputs[:256])
    cfg = DistillConfig(alpha=0.9, temperature=4.0,
                        train=TrainConfig(epochs=epochs, lr=lr, batch_size=64, progress="off", seed=seed))
    result = distill_fit(prepared, teacher, splits.train, cfg, splits.val, callbacks=[
        FreezeBatchNormCallback(at_epoch=epochs // 2), FreezeObserversCallback(at_epoch=epochs - 1)])
    return convert_qat(result.model.eval(), example=splits.test.inputs[:1])


def packed_bytes(qmodel: nn.Module) -> int:
    """Bytes of the quantized layers' weights if packed at their bit width (+ fp32 scales, int32 bias)."""
    total = 0
    for w in quant_wrappers(qmodel).values():
        m = w.module
        total += (m.weight.numel() * w.weight_fq.spec.bits + 7) // 8 + 4 * m.weight.shape[0]
        total += 4 * m.weight.shape[0] if m.bias is not None else 0
    return total


def layer_sensitivity(teacher: nn.Module, splits: Any) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, int]]]:
    """Per layer and width in {8, 4, 2}: validation loss increase with only that layer lowered (MSE
    weight ranges, the rest int8), and the layer's packed bytes (weights + fp32 scale + int32 bias)."""
    calib = splits.train
    base = quantize(teacher, QuantizeConfig(weight_observer="mse"), calibration=calib)
    base_loss = evaluate(base, splits.val)["loss"]
    sens: dict[str, dict[int, float]] = {}
    sizes: dict[str, dict[int, int]] = {}
    for name, w in quant_wrappers(base).items():
        m = w.module
        sens[name] = {8: 0.0}
        sizes[name] = {b: (m.weight.numel() * b + 7) // 8 + 8 * m.weight.shape[0] for b in (8, 4, 2)}
        for b in (4, 2):
            q = quantize(teacher, QuantizeConfig(layer_bits={name: b}, weight_observer="mse"), calibration=calib)
            # a negative change is noise; the tiny per-bit term sends spare budget to more bits
            sens[name][b] = max(0.0, evaluate(q, splits.val)["loss"] - base_loss) + 1e-6 * (8 - b)
    return sens, sizes


def run_seed(splits: Any, seed: int, epochs: int, work: Path, mp_budgets: list[float]) -> dict[str, Any]:
    t0 = time.time()
    teacher = train_teacher(splits, seed, epochs)
    test = splits.test
    r: dict[str, Any] = {"seed": seed, "fp32": acc(teacher, test)}
    # fp32 bytes of the same tensors `packed_bytes` counts (weights + one bias per output, BN folded)
    r["fp32_weight_bytes"] = sum(4 * m.weight.numel() + 4 * m.weight.shape[0] for m in teacher.modules()
                                 if isinstance(m, (nn.Conv2d, nn.Linear)))
    d = work / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    for obs in OBSERVERS:
        q = quantize(teacher, QuantizeConfig(observer=obs), calibration=splits.train)
        r[f"static_{obs}"] = {"torch": acc(q, test), **int8_onnx(q, splits, d / f"static_{obs}.onnx",
                                                                  fp32_path=d / "fp32.onnx" if obs == "minmax" else None)}
        if obs == "minmax":
            r["static_minmax"]["packed_bytes"] = packed_bytes(q)
            if seed == 0:  # the latency variants
                int8_onnx(q, splits, d / "static_minmax_s8.onnx", activation_dtype="int8")
    q = quantize(teacher, QuantizeConfig(ignore=[FIRST_CONV]), calibration=splits.train)
    r["static_float_first"] = {"torch": acc(q, test), **int8_onnx(q, splits, d / "static_float_first.onnx")}
    for wobs in ("minmax", "mse"):
        q = quantize(teacher, QuantizeConfig(weight_bits=4, weight_observer=wobs), calibration=splits.train)
        r[f"w4a8_{wobs}"] = {"torch": acc(q, test), "packed_bytes": packed_bytes(q),
                             **int8_onnx(q, splits, d / f"w4a8_{wobs}.onnx")}
    for bits, ep, lr in ((8, 3, 2e-4), (2, 10, 1e-3)):
        c = qat(teacher, splits, seed, bits, ep, lr)
        r[f"qat_w{bits}"] = {"torch": acc(c, test), "packed_bytes": packed_bytes(c),
                             **int8_onnx(c, splits, d / f"qat_w{bits}.onnx")}
    sens, sizes = layer_sensitivity(teacher, splits)
    int8_bytes = sum(v[8] for v in sizes.values())
    for budget, uniform_bits in zip(mp_budgets, (4, 2), strict=False):
        plan = solve_bits(sens, sizes, int(budget * int8_bytes))
        q = quantize(teacher, QuantizeConfig(layer_bits=plan, weight_observer="mse"), calibration=splits.train)
        r[f"mixed_{budget}"] = {"torch": acc(q, test), "packed_bytes": packed_bytes(q), "plan": plan,
                                "budget_bytes": int(budget * int8_bytes), "int8_bytes": int8_bytes,
                                **int8_onnx(q, splits, d / f"mixed_{budget}.onnx")}
        q = quantize(teacher, QuantizeConfig(layer_bits={n: uniform_bits for n in plan}, weight_observer="mse"),
                     calibration=splits.train)
        r[f"uniform_{budget}"] = {"torch": acc(q, test), "packed_bytes": packed_bytes(q), "bits": uniform_bits}
    r["sensitivity"] = {n: {str(b): v for b, v in d_.items()} for n, d_ in sens.items()}
    r["seconds"] = time.time() - t0
    if seed == 0:
        r["_teacher"] = teacher  # for the latency part
    return r


# -- latency part ----------------------------------------------------------------------------------
def session(path: Path, threads: int, level: str = "all") -> Any:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def interleaved(sessions: dict[str, Any], x: np.ndarray, reps: int, warmup: int = 10) -> dict[str, dict[str, float]]:
    """Median wall and thread-CPU ms (and min wall) per session, through the library's timer
    (`interleaved_latency`: sessions in random order each round, GC paused)."""
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    runs = {k: (lambda _f, s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}
    return interleaved_latency(runs, [None], repeats=reps, warmup=warmup, seed=0)


def iobinding_bs1(sessions: dict[str, Any], x: np.ndarray, reps: int) -> dict[str, float]:
    """Median ms at batch 1 with pre-bound input / output buffers (no per-call numpy conversion)."""
    import onnxruntime as ort

    calls = {}
    for k, s in sessions.items():
        b = s.io_binding()
        b.bind_ortvalue_input(s.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x))
        b.bind_ortvalue_output(s.get_outputs()[0].name, ort.OrtValue.ortvalue_from_shape_and_type([1, 10], np.float32))
        calls[k] = (s, b)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    order, rng = list(sessions), random.Random(1)
    for s, b in calls.values():
        for _ in range(20):
            s.run_with_iobinding(b)
    gc.disable()
    try:
        for _ in range(reps):
            rng.shuffle(order)
            for k in order:
                s, b = calls[k]
                t0 = time.perf_counter()
                s.run_with_iobinding(b)
                times[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in times.items()}


def node_profile(path: Path, x: np.ndarray, runs: int) -> list[dict[str, Any]]:
    """Per-node median kernel time (µs) from ORT's profiler, in execution order (1 thread)."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = 1, 1, 3
    o.enable_profiling = True
    o.profile_file_prefix = str(path.with_suffix("")) + "_prof"
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    for _ in range(runs):
        s.run(None, feed)
    prof = Path(s.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink()
    per: dict[str, list[float]] = collections.defaultdict(list)
    op: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per[name].append(e["dur"])
            op[name] = e["args"]["op_name"]
    return [{"node": n, "op": op[n], "us": statistics.median(v[len(v) // 4:])} for n, v in per.items()]


def truncated_layer_costs(teacher: nn.Module, splits: Any, work: Path, reps: int) -> list[dict[str, float]]:
    """Cost of each conv at batch 1: networks cut after conv k (+ GAP + a Linear), fp32 vs int8, min ms."""
    convs = [block for stage in teacher.features for block in stage]
    sessions, out = {}, []
    for k in range(1, len(convs) + 1):
        torch.manual_seed(0)
        width = convs[k - 1].conv.out_channels
        m = nn.Sequential(*copy.deepcopy(convs[:k]), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(width, 10)).eval()
        q = quantize(m, QuantizeConfig(), calibration=splits.train)
        export_int8_onnx(q, splits.test.inputs[:1], work / f"cut{k}_int8.onnx", fp32_path=work / f"cut{k}_fp32.onnx")
        sessions[f"fp32_{k}"] = session(work / f"cut{k}_fp32.onnx", 1)
        sessions[f"int8_{k}"] = session(work / f"cut{k}_int8.onnx", 1)
    x = np.ascontiguousarray(splits.test.inputs[:1].numpy())
    t = interleaved(sessions, x, reps)
    prev = {"fp32": 0.0, "int8": 0.0}
    for k in range(1, len(convs) + 1):
        row = {"upto": k}
        for kind in ("fp32", "int8"):
            v = t[f"{kind}_{k}"]["min_ms"] * 1e3
            row[f"{kind}_us"], row[f"{kind}_delta_us"] = v, v - prev[kind]
            prev[kind] = v
        out.append(row)
    return out


def latency_study(teacher: nn.Module, splits: Any, work: Path) -> dict[str, Any]:
    d = work / "seed0"
    files = {"fp32": d / "fp32.onnx", "int8_u8": d / "static_minmax.onnx", "int8_s8": d / "static_minmax_s8.onnx",
             "int8_u8_float_first": d / "static_float_first.onnx"}
    dyn = d / "dynamic_convinteger.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic_onnx(files["fp32"], dyn, per_channel=False, op_types=("Conv", "MatMul"))
    x1 = splits.test.inputs[:1].numpy()
    res: dict[str, Any] = {"blocks": []}
    for threads in (1, 2):
        sessions = {k: session(p, threads) for k, p in files.items()}
        sessions["int8_u8_no_layout_opt"] = session(files["int8_u8"], threads, "extended")
        sessions["dynamic_convinteger"] = session(dyn, threads)
        for bs, reps in ((1, 2000), (256, 40)):
            load = loadavg()
            t = interleaved(sessions, np.ascontiguousarray(np.repeat(x1, bs, 0)), reps)
            base = t["fp32"]
            for v in t.values():
                v["wall_ratio"] = v["wall_ms"] / base["wall_ms"]
                v["cpu_ratio"] = v["cpu_ms"] / base["cpu_ms"]
                v["min_ratio"] = v["min_ms"] / base["min_ms"]
            res["blocks"].append({"threads": threads, "batch": bs, "reps": reps, "loadavg": load, "loadavg_after": loadavg(),
                                  "results": t})
            print(f"  latency threads={threads} batch={bs} (load {load}): "
                  + "  ".join(f"{k} x{v['wall_ratio']:.2f}" for k, v in t.items()), flush=True)
        if threads == 1:
            load = loadavg()
            io = iobinding_bs1({k: sessions[k] for k in files}, np.ascontiguousarray(x1), 3000)
            res["iobinding_bs1"] = {"loadavg": load, "ms": io, "ratio": {k: v / io["fp32"] for k, v in io.items()}}
    x256 = np.ascontiguousarray(np.repeat(x1, 256, 0))
    res["profile_bs256"] = {k: node_profile(files[k], x256, 30) for k in ("fp32", "int8_u8", "int8_u8_float_first")}
    res["profile_bs256_loadavg"] = loadavg()
    res["layer_costs_bs1"] = truncated_layer_costs(teacher, splits, d, 1500)
    res["layer_costs_loadavg"] = loadavg()
    return res


# -- report ----------------------------------------------------------------------------------------
ROWS = [("fp32", "fp32"), *[(f"static_{o}", f"static int8, {o}") for o in OBSERVERS],
        ("static_float_first", "static int8, minmax, first conv float"),
        ("w4a8_minmax", "w4a8 static (first/last 8-bit), minmax weights"),
        ("w4a8_mse", "w4a8 static (first/last 8-bit), MSE weights"),
        ("qat_w8", "QAT LSQ + distillation, 8-bit weights"),
        ("qat_w2", "QAT LSQ + distillation, 2-bit weights (inner convs)")]


def rows(budgets: list[float]) -> list[tuple[str, str]]:
    out = list(ROWS)
    for budget, bits in zip(budgets, (4, 2), strict=False):
        out += [(f"uniform_{budget}", f"uniform {bits}-bit weights, MSE (fits {budget:g} x int8 bytes)"),
                (f"mixed_{budget}", f"mixed precision {{8,4,2}}, budget {budget:g} x int8 weight bytes")]
    return out


def ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def accuracy_table(seeds: list[dict[str, Any]], budgets: list[float]) -> str:
    fp32 = [s["fp32"] for s in seeds]
    lines = ["| configuration | PyTorch acc % | drop pt | onnxruntime acc % | drop pt | ORT = sim top-1 % | weights packed / fp32 |",
             "|---|---|---|---|---|---|---|"]
    for key, label in rows(budgets):
        if key == "fp32":
            lines.append(f"| fp32 | {ms(fp32)} | — | {ms(fp32)} | — | — | 1 |")
            continue
        torch_acc = [s[key]["torch"] for s in seeds]
        drop = [f - t for f, t in zip(fp32, torch_acc, strict=True)]
        ort_cells = ["—", "—", "—"]
        if "ort" in seeds[0][key]:
            o = [s[key]["ort"] for s in seeds]
            ort_cells = [ms(o), ms([f - v for f, v in zip(fp32, o, strict=True)]),
                         f"{statistics.mean(s[key]['agreement'] for s in seeds):.2f}"]
        packed = "—"
        if "packed_bytes" in seeds[0][key]:
            packed = f"{statistics.mean(s[key]['packed_bytes'] / s['fp32_weight_bytes'] for s in seeds):.3f}"
        lines.append(f"| {label} | {ms(torch_acc)} | {ms(drop)} | {' | '.join(ort_cells)} | {packed} |")
    s0 = seeds[0]["static_minmax"]
    lines.append(f"\nint8 ONNX file / fp32 ONNX file: {statistics.mean(s['static_minmax']['size_ratio'] for s in seeds):.3f} "
                 f"({s0['bytes']:,} / {s0['fp32_bytes']:,} bytes, seed 0)")
    return "\n".join(lines)


def latency_tables(lat: dict[str, Any]) -> str:
    lines = ["| threads | batch | load avg (1/5/15 min) | variant | fp32 ms | variant ms | wall ratio | CPU-time ratio | min ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in lat["blocks"]:
        f = b["results"]["fp32"]
        for k, v in b["results"].items():
            if k == "fp32":
                continue
            lines.append(f"| {b['threads']} | {b['batch']} | {b['loadavg']} | {k} | {f['wall_ms']:.4f} | {v['wall_ms']:.4f} | "
                         f"{v['wall_ratio']:.3f} | {v['cpu_ratio']:.3f} | {v['min_ratio']:.3f} |")
    io = lat["iobinding_bs1"]
    lines.append("\nIOBinding, batch 1, 1 thread (load " + io["loadavg"] + "): "
                 + ", ".join(f"{k} {v:.4f} ms (x{io['ratio'][k]:.3f})" for k, v in io["ms"].items()))
    lines.append("\nPer-layer cost at batch 1 (network cut after conv k; min over runs, µs):\n")
    lines.append("| conv | fp32 cumulative | int8 cumulative | fp32 this layer | int8 this layer |\n|---|---|---|---|---|")
    for r in lat["layer_costs_bs1"]:
        lines.append(f"| {r['upto']} | {r['fp32_us']:.1f} | {r['int8_us']:.1f} | {r['fp32_delta_us']:.1f} | {r['int8_delta_us']:.1f} |")
    lines.append("\nORT per-node kernel time at batch 256, 1 thread (median µs, execution order):\n")
    for k, rows in lat["profile_bs256"].items():
        total = sum(r["us"] for r in rows)
        lines.append(f"- {k} (sum {total:.0f} µs): " + ", ".join(f"{r['op']} {r['us']:.0f}" for r in rows))
    return "\n".join(lines)


def schemes_study(splits: Any, seeds: int, epochs: int) -> dict[str, Any]:
    """`compare_static_schemes` on each seed's teacher (the library measures; this prints)."""
    from condense.quantize.schemes import compare_static_schemes

    out: dict[str, Any] = {"seeds": []}
    for seed in range(seeds):
        teacher = train_teacher(splits, seed, epochs)
        r = compare_static_schemes(teacher, splits.train, splits.test.inputs, splits.test.targets,
                                   config={"calibration_samples": 512}, threads=1)
        out["cpu"], out["emulated"] = r["cpu"], r["emulated"]
        out["seeds"].append({"seed": seed, "fp32": acc(teacher, splits.test), "schemes": r["schemes"]})
        print(f"seed {seed}: fp32 {out['seeds'][-1]['fp32']:.2f}  " + "  ".join(
            f"{k} sim {v['simulation_accuracy']:.2f} here {v['here']['accuracy']:.2f} "
            f"emu-avx2 {v['emulated_avx2']['top1_agreement'] if v['emulated_avx2'] else float('nan'):.2f}%agree"
            for k, v in r["schemes"].items()), flush=True)
    return out


def schemes_table(study: dict[str, Any]) -> str:
    cpu = study["cpu"]
    lines = [f"CPU: {cpu['cpu']} ({cpu['int8_target']}; flags {', '.join(cpu['flags'])}); emulated: {study['emulated']}",
             "| scheme | weights | sim acc % | ORT acc % here | agree % here | ORT acc % emulated AVX2 | agree % emulated AVX2 "
             "| bytes | b1 int8/fp32 | b256 int8/fp32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    names = list(study["seeds"][0]["schemes"])

    def mean(vals: list[float]) -> str:
        vals = [v for v in vals if v is not None]
        return f"{statistics.mean(vals):.2f} ± {statistics.pstdev(vals):.2f}" if vals else "n/a"

    for n in names:
        rows = [s["schemes"][n] for s in study["seeds"]]
        emu = [r["emulated_avx2"] for r in rows]
        lines.append(
            f"| {n} | {'/'.join(map(str, rows[0]['weight_bits']))}-bit {rows[0]['weight_dtype']} "
            f"| {mean([r['simulation_accuracy'] for r in rows])} | {mean([r['here']['accuracy'] for r in rows])} "
            f"| {mean([r['here']['top1_agreement'] for r in rows])} "
            f"| {mean([e['accuracy'] if e else None for e in emu])} | {mean([e['top1_agreement'] if e else None for e in emu])} "
            f"| {rows[0]['bytes']:,} | {mean([r['latency']['1']['int8_over_fp32'] for r in rows])} "
            f"| {mean([r['latency']['256']['int8_over_fp32'] for r in rows])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--mp-budgets", type=float, nargs="+", default=[0.5, 0.3],
                    help="mixed precision budgets: packed weight bytes / int8 weight bytes (compared with uniform 4 and 2 bits)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--schemes-only", action="store_true", help="only the CPU int8 schemes study (see the docstring)")
    ap.add_argument("--json", default="benchmarks/results/quant_digits.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    t_start = time.time()
    splits = load_dataset("digits", seed=0)
    result: dict[str, Any] = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                          "loadavg_start": loadavg(), **cpu_record()}, "seeds": []}
    if args.schemes_only:
        result["schemes"] = schemes_study(splits, args.seeds, args.epochs)
        print("\n" + schemes_table(result["schemes"]))
        finish(result, t_start, args.json)
        return
    print(f"load average at start: {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="quant_digits_") as tmp:
        work = Path(tmp)
        teacher0 = None
        for seed in range(args.seeds):
            r = run_seed(splits, seed, args.epochs, work, args.mp_budgets)
            teacher0 = r.pop("_teacher", teacher0)
            result["seeds"].append(r)
            print(f"seed {seed}: fp32 {r['fp32']:.2f}  static minmax torch {r['static_minmax']['torch']:.2f} "
                  f"ort {r['static_minmax']['ort']:.2f}  w4a8 {r['w4a8_mse']['torch']:.2f}  qat w2 {r['qat_w2']['torch']:.2f}  "
                  + "  ".join(f"mixed@{b:g} {r[f'mixed_{b}']['torch']:.2f} {list(r[f'mixed_{b}']['plan'].values())}" for b in args.mp_budgets)
                  + f"  ({r['seconds']:.0f} s, load {loadavg()})", flush=True)
        print("\n" + accuracy_table(result["seeds"], args.mp_budgets), flush=True)
        if not args.skip_latency and teacher0 is not None:
            result["latency"] = latency_study(teacher0, splits, work)
            print("\n" + latency_tables(result["latency"]))
    finish(result, t_start, args.json)


def finish(result: dict[str, Any], t_start: float, json_path: str) -> None:
    """Close the record (end load, total seconds), print the total and write the JSON file."""
    result["machine"]["loadavg_end"] = loadavg()
    result["seconds"] = time.time() - t_start
    print(f"\ntotal {result['seconds']:.0f} s; load average at end: {loadavg()}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
