"""Issue 27 item 2: the Fashion-MNIST chain, teacher -> distill -> prune (structured) -> int8 ONNX.

Data and models: `fmnist_common.py` (54,000 training images, 6,000 val, the official 10,000
test images; teacher zoo `cnn` width 24, student `cnn` width 16). One seed (0) for the chain.

1. Teacher: AdamW lr 3e-3, wd 5e-4, cosine, 50 warm-up steps, batch 128, `--teacher-epochs`
   epochs, best val epoch. Saved with `condense.save` to /tmp/condense_fmnist/teacher for
   `fmnist_kd_families.py`.
2. Student distilled (`condense.distill`, alpha 0.9, T 4, cached teacher logits) and, last (step
   6, skipped past the wall-clock bound), the student alone (cross-entropy): both AdamW lr 5e-3,
   batch 128, `--student-epochs` epochs, best val epoch.
3. Structured pruning of the distilled student: `prune_and_recover` with `ChannelConfig` (L1,
   per layer, widths rounded to 8) at `--target-macs` of its MACs, BatchNorm re-estimated, then
   `--recover-epochs` epochs of distillation from the teacher (alpha 0.9, T 4, lr 3e-3, last epoch).
   Peer: Torch-Pruning (MetaPruner, L1 magnitude, same channel ratio, widths rounded to 8, the
   classifier kept), then the same BatchNorm re-estimate and the same distillation recovery.
4. int8: condense's static PTQ (`QuantizeConfig()` defaults: per-channel int8 weights, uint8
   activations, BN folded, bias correction) on the same 512 training images, exported by
   `export_int8_onnx` (QDQ, run by ONNX Runtime). Peer: ONNX Runtime's own `quantize_static`
   (QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax, after `quant_pre_process`) on the
   same student fp32 ONNX file and the same 512 calibration images.
5. Latency: batch 1, ONNX Runtime, one intra-op thread, every file interleaved in one pass
   (`condense.quantize.interleaved_latency`: random order each round, GC paused; median wall ms).

    nice -n 5 python benchmarks/protocols/fmnist_chain.py            # the table (~12 min of CPU on one core)
    nice -n 5 python benchmarks/protocols/fmnist_chain.py --quick    # smoke: 3,000 images, 1 epoch

Writes benchmarks/results/protocol_fmnist_chain.json (`--quick`: ..._quick.json) and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmnist_common as C  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def ort_quantizer(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    """ONNX Runtime's own static quantizer on the same fp32 file and calibration images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort_session(fp32).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i:i + 1].numpy()} for i in range(len(calib))])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    pre = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def tp_prune(model: torch.nn.Module, x1: torch.Tensor, ratio: float) -> torch.nn.Module:
    """Torch-Pruning's MetaPruner, L1 magnitude, per layer, widths rounded to 8, classifier kept."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, x1, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[model.classifier], round_to=8)
    pruner.step()
    return model


def markdown(r: dict[str, Any]) -> str:
    """The docs table from a results JSON (every number read from it)."""
    rows, lat = r["rows"], r["latency_b1_ort_1thread"]
    ep = r["epochs"]
    plan = [  # row key, label, accuracy key, latency key, time key
        ("teacher", f"teacher cnn w24, fp32 ({ep['teacher']} ep)", "onnx_test_accuracy", "teacher_fp32", "teacher"),
        ("student_alone", f"student cnn w16 alone, CE ({ep['student']} ep)", "test_accuracy", None, "student_alone"),
        ("student_kd", f"student cnn w16 distilled ({ep['student']} ep), torch fp32", "test_accuracy", None, "distill"),
        ("int8_unpruned", "  distilled, unpruned, condense int8 ONNX", "test_accuracy", "student_kd_int8_unpruned", None),
        ("pruned_kd", f"  pruned (condense, L1, {r['target_macs']:g} of MACs) + {ep['recover']} ep KD, torch fp32",
         "test_accuracy", None, "prune"),
        ("student_fp32_onnx", "  pruned, fp32 ONNX", "test_accuracy", "student_fp32", None),
        ("int8_condense", "  **pruned, condense static int8 ONNX (deployed)**", "test_accuracy", "student_int8_condense",
         "int8_condense"),
        ("int8_ort_quantizer", "  pruned, ONNX Runtime quantize_static int8 (same fp32 file + calibration)", "test_accuracy",
         "student_int8_ort", "int8_ort"),
        ("tp_pruned_kd", f"  pruned (Torch-Pruning, same channel ratio) + {ep['recover']} ep KD, torch fp32",
         "test_accuracy", None, "tp_prune"),
        ("tp_int8_condense", "  Torch-Pruning pruned, condense static int8 ONNX", "test_accuracy", "tp_int8_condense", None),
    ]
    out = ["| model | params | MACs | ONNX bytes | test acc % | ORT batch-1 ms | x teacher | CPU s |",
           "|---|---|---|---|---|---|---|---|"]
    for key, label, akey, lkey, tkey in plan:
        if key not in rows:
            continue
        x = rows[key]
        p = f"{x['params']:,}" if "params" in x else ""
        m = f"{x['macs'] / 1e6:.2f}M" if "macs" in x else ""
        b = f"{x['bytes']:,}" if "bytes" in x else ""
        lm = f"{lat[lkey]['wall_ms']:.4f}" if lkey else ""
        lr = f"{lat[lkey]['ratio_to_teacher']:.3f}" if lkey else ""
        t = r["stage_times"].get(tkey, {}).get("cpu_s", "") if tkey else ""
        out.append(f"| {label} | {p} | {m} | {b} | {x[akey]:.2f} | {lm} | {lr} | {t} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=None, help="print the Markdown table of a results JSON and exit")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3,000 training images, 1 epoch per stage")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--student-epochs", type=int, default=4)
    ap.add_argument("--recover-epochs", type=int, default=1)
    ap.add_argument("--target-macs", type=float, default=0.4)
    ap.add_argument("--repeats", type=int, default=3000, help="latency rounds (all files each round)")
    ap.add_argument("--reuse-teacher", action="store_true", help="load the saved teacher instead of training it")
    ap.add_argument("--skip-tp", action="store_true", help="leave out the Torch-Pruning row")
    ap.add_argument("--skip-alone", action="store_true", help="leave out the student-alone row")
    ap.add_argument("--max-minutes", type=float, default=40.0, help="wall-clock bound: stop with an error past it")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    if args.quick:
        args.teacher_epochs = args.student_epochs = args.recover_epochs = 1
        args.repeats = 300
    torch.set_num_threads(1)

    import condense
    from condense.distill import DistillConfig, distill
    from condense.evaluate.profile import environment
    from condense.export import export_onnx
    from condense.prune import ChannelConfig, count_macs
    from condense.prune.recover import prune_and_recover
    from condense.quantize import QuantizeConfig, export_int8_onnx, interleaved_latency, quantize
    from condense.train import TrainConfig, train_model
    from condense.train.recover import RecoverConfig, recalibrate_batchnorm

    t_start, c_start = time.perf_counter(), time.process_time()
    deadline = t_start + 60 * args.max_minutes

    def check_time(stage: str) -> None:
        if time.perf_counter() > deadline:
            raise SystemExit(f"wall-clock bound of {args.max_minutes} min passed before {stage}")

    clock = C.Clock()
    data = C.splits(limit=3000 if args.quick else None)
    train, val, test = data.train, data.val, data.test
    x1 = test.inputs[:1]
    print(f"data: {len(train)} train / {len(val)} val / {len(test)} test; load {C.loadavg()}", flush=True)
    common = dict(optimizer="adamw", weight_decay=5e-4, schedule="cosine", warmup_steps=50, batch_size=128,
                  drop_last=True, progress="off", device="cpu", seed=0)
    t_cfg = TrainConfig(**common, epochs=args.teacher_epochs, lr=3e-3, select_best="val_accuracy")
    s_cfg = TrainConfig(**common, epochs=args.student_epochs, lr=5e-3, select_best="val_accuracy")
    r_cfg = TrainConfig(**{**common, "warmup_steps": 20}, epochs=args.recover_epochs, lr=3e-3, select_best="last")
    rows: dict[str, dict[str, Any]] = {}

    def row(key: str, model: torch.nn.Module, **extra: Any) -> None:
        rows[key] = {"test_accuracy": C.acc(model, test), "params": C.params(model), "macs": count_macs(model, x1), **extra}
        print(f"{key}: {rows[key]}", flush=True)

    # 1. teacher
    if args.reuse_teacher and (C.TEACHER_DIR / "condense.json").exists():
        teacher = condense.load(C.TEACHER_DIR).eval()
        teacher_time = json.loads((C.TEACHER_DIR / "condense.json").read_text()).get("train_time")
    else:
        with clock("teacher"):
            teacher = train_model(C.build(C.TEACHER, 0), train, t_cfg, val).model.eval()
        teacher_time = clock.t["teacher"]
        if not args.quick:
            condense.save(teacher, C.TEACHER_DIR, extra={"train_time": teacher_time, "train": t_cfg.to_dict()})
    row("teacher", teacher, train_time=teacher_time)
    check_time("the student")

    with tempfile.TemporaryDirectory(prefix="fmnist_chain_") as tmp:
        work = Path(tmp)
        # 2. student distilled (the student alone, same schedule, runs last: step 6)
        with clock("distill"):
            kd_cfg = DistillConfig(alpha=0.9, temperature=4.0, train=s_cfg, cache_dir=str(work / "cache"))
            student = distill(C.build(C.STUDENT, 0), teacher, train, kd_cfg, val).eval()
        row("student_kd", student, train_time=clock.t["distill"])
        check_time("pruning")

        # 3. structured pruning + recovery (condense), and the Torch-Pruning peer at the same channel ratio
        rec = RecoverConfig(method="distill", alpha=0.9, temperature=4.0, train=r_cfg, bn_batches=8)
        with clock("prune"):
            pruned, info = prune_and_recover(copy.deepcopy(student), ChannelConfig(importance="l1", round_to=8), rec,
                                             train, val, x1, target_macs=args.target_macs, teacher=teacher)
        pruned.eval()
        widths = {g["root"]: len(g["keep"]) for e in pruned.condense_edits if e["kind"] == "prune_channels"
                  for g in e["params"]["groups"]}
        row("pruned_kd", pruned, train_time=clock.t["prune"], channel_ratio=info["channel_ratio"], widths=widths)
        tp_model = None
        if not args.skip_tp:
            check_time("Torch-Pruning")
            with clock("tp_prune"):
                tp_model = tp_prune(copy.deepcopy(student), x1, info["channel_ratio"])
                recalibrate_batchnorm(tp_model, train, 8, 128, 0)
                tp_model = distill(tp_model, teacher, train,
                                   DistillConfig(alpha=0.9, temperature=4.0, train=r_cfg, cache_dir=str(work / "cache"))).eval()
            tp_widths = {n: m.out_channels for n, m in tp_model.named_modules() if isinstance(m, torch.nn.Conv2d)}
            row("tp_pruned_kd", tp_model, train_time=clock.t["tp_prune"], channel_ratio=info["channel_ratio"],
                widths=tp_widths, torch_pruning=__import__("torch_pruning").__version__)

        # 4. int8: condense static PTQ, and ONNX Runtime's quantizer on the same fp32 file
        check_time("quantization")
        calib = train.inputs[:512]
        files: dict[str, Path] = {"teacher_fp32": Path(export_onnx(teacher, x1, work / "teacher.onnx").path)}
        with clock("int8_condense"):
            q = quantize(copy.deepcopy(pruned), QuantizeConfig(), calibration=calib)
            res = export_int8_onnx(q, x1, work / "student_int8.onnx", heldout=test.inputs[:1000],
                                   fp32_path=work / "student_fp32.onnx", threads=1)
        files["student_fp32"] = work / "student_fp32.onnx"
        files["student_int8_condense"] = res.path
        rows["int8_condense"] = {"test_accuracy": C.acc(str(res.path), test), "bytes": res.bytes, "fp32_bytes": res.fp32_bytes,
                                 "agreement_with_simulation": res.top1_agreement, "target": res.target,
                                 "weight_dtype": res.weight_dtype, "notes": res.notes, "ort_ops": res.ort_ops,
                                 "params": rows["pruned_kd"]["params"], "macs": rows["pruned_kd"]["macs"],
                                 "simulation_accuracy": C.acc(q, test), "time": clock.t["int8_condense"]}
        rows["student_fp32_onnx"] = {"test_accuracy": C.acc(str(files["student_fp32"]), test),
                                     "bytes": files["student_fp32"].stat().st_size}
        rows["teacher"]["onnx_test_accuracy"] = C.acc(str(files["teacher_fp32"]), test)
        rows["teacher"]["bytes"] = files["teacher_fp32"].stat().st_size
        with clock("int8_ort"):
            files["student_int8_ort"] = ort_quantizer(files["student_fp32"], work / "student_int8_ort.onnx", calib)
        rows["int8_ort_quantizer"] = {"test_accuracy": C.acc(str(files["student_int8_ort"]), test),
                                      "bytes": files["student_int8_ort"].stat().st_size, "time": clock.t["int8_ort"],
                                      "params": rows["pruned_kd"]["params"], "macs": rows["pruned_kd"]["macs"]}
        print(f"int8: condense {rows['int8_condense']['test_accuracy']:.2f} ORT quantizer "
              f"{rows['int8_ort_quantizer']['test_accuracy']:.2f}", flush=True)
        if tp_model is not None:
            qt = quantize(copy.deepcopy(tp_model), QuantizeConfig(), calibration=calib)
            rt = export_int8_onnx(qt, x1, work / "tp_int8.onnx", threads=1)
            files["tp_int8_condense"] = rt.path
            rows["tp_int8_condense"] = {"test_accuracy": C.acc(str(rt.path), test), "bytes": rt.bytes,
                                        "params": rows["tp_pruned_kd"]["params"], "macs": rows["tp_pruned_kd"]["macs"]}
        q_unpruned = quantize(copy.deepcopy(student), QuantizeConfig(), calibration=calib)
        ru = export_int8_onnx(q_unpruned, x1, work / "kd_int8.onnx", threads=1)
        files["student_kd_int8_unpruned"] = ru.path
        rows["int8_unpruned"] = {"test_accuracy": C.acc(str(ru.path), test), "bytes": ru.bytes,
                                 "params": rows["student_kd"]["params"], "macs": rows["student_kd"]["macs"]}

        # 5. batch-1 latency, all files interleaved in one pass
        loadavg_before = C.loadavg()
        sessions = {k: ort_session(p) for k, p in files.items()}
        feeds = [test.inputs[i:i + 1].numpy() for i in range(16)]
        names = {k: s.get_inputs()[0].name for k, s in sessions.items()}
        runs = {k: (lambda f, s=s, n=names[k]: s.run(None, {n: f})) for k, s in sessions.items()}
        with clock("latency"):
            lat = interleaved_latency(runs, feeds, repeats=args.repeats, warmup=50, seed=0)
        base = lat["teacher_fp32"]["wall_ms"]
        latency = {k: {**v, "ratio_to_teacher": v["wall_ms"] / base} for k, v in lat.items()}

    # 6. the student alone (cross-entropy, the distillation's schedule), if the wall-clock bound allows
    if time.perf_counter() < deadline and not args.skip_alone:
        with clock("student_alone"):
            alone = train_model(C.build(C.STUDENT, 0), train, s_cfg, val).model.eval()
        row("student_alone", alone, train_time=clock.t["student_alone"])

    deployed = rows["int8_condense"]["test_accuracy"]
    t_acc = rows["teacher"]["onnx_test_accuracy"]
    ratio = latency["student_int8_condense"]["ratio_to_teacher"]
    targets = {
        "int8_student_acc_ge_93": {"value": deployed, "met": deployed >= 93.0},
        "within_1.5pt_of_teacher": {"value": t_acc - deployed, "met": t_acc - deployed <= 1.5},
        "params_lt_100k": {"value": rows["pruned_kd"]["params"], "met": rows["pruned_kd"]["params"] < 100_000},
        "latency_le_0.2x_teacher": {"value": ratio, "met": ratio <= 0.2},
    }
    result = {
        "benchmark": "protocol_fmnist_chain",
        "command": "nice -n 5 python benchmarks/protocols/fmnist_chain.py " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "data": {"dataset": "fashion-mnist", "train": len(train), "val": len(val), "test": len(test), "split_seed": 0},
        "seeds": [0],
        "models": {"teacher": C.TEACHER, "student": C.STUDENT},
        "train": {"teacher": t_cfg.to_dict(), "student": s_cfg.to_dict(), "recover": r_cfg.to_dict()},
        "epochs": {"teacher": args.teacher_epochs, "student": args.student_epochs, "recover": args.recover_epochs},
        "target_macs": args.target_macs,
        "rows": rows,
        "latency_b1_ort_1thread": latency,
        "latency_repeats": args.repeats,
        "loadavg_before_latency": loadavg_before,
        "targets": targets,
        "published": C.PUBLISHED,
        "stage_times": clock.t,
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "cpu_s": round(time.process_time() - c_start, 1),
    }
    path = Path(args.json) if args.json else RESULTS / ("protocol_fmnist_chain_quick.json" if args.quick else "protocol_fmnist_chain.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for k, v in latency.items():
        print(f"latency {k}: {v['wall_ms']:.4f} ms ({v['ratio_to_teacher']:.3f}x teacher)")
    for k, v in targets.items():
        print(f"target {k}: {v['value']} -> {'met' if v['met'] else 'MISSED'}")
    print(f"wall {result['wall_s']} s, CPU {result['cpu_s']} s; written to {path}")


if __name__ == "__main__":
    main()
