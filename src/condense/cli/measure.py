"""`condense eval | profile | export | models | datasets`: commands that look at a model or list what exists."""
from __future__ import annotations

import argparse
from typing import Any

from condense.cli.common import (
    EXIT_OK,
    add_arch_opts,
    add_data_opts,
    add_force_opt,
    add_model_opts,
    check_out_file,
    check_out_folder,
    data_from,
    model_from_args,
    show,
)


def cmd_models(args: argparse.Namespace) -> int:
    from condense.models import list_models

    rows = list_models()
    show([{"name": n, "help": h} for n, h in rows], args.json, "\n".join(f"{n:14s} {h}" for n, h in rows))
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace) -> int:
    from condense.data import list_datasets

    rows = list_datasets()
    show([{"name": n, "help": h} for n, h in rows], args.json, "\n".join(f"{n:14s} {h}" for n, h in rows))
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from condense.evaluate import evaluate

    meta = None
    target: Any = args.model
    if not str(args.model).endswith(".onnx"):
        target, meta = model_from_args(args)
    splits, _, _ = data_from(args, meta, required=True)
    data = getattr(splits, args.split)
    metrics = evaluate(target, data, threads=args.threads)
    text = (f"{args.split}: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1_macro']:.4f}  "
            f"loss {metrics['loss']:.4f}  (n={metrics['n']}, runtime {metrics.get('runtime')})")
    show(metrics, args.json, text)
    return EXIT_OK


def cmd_profile(args: argparse.Namespace) -> int:
    from condense.data.loader import example_inputs
    from condense.evaluate import profile

    model, meta = model_from_args(args)
    splits, _, _ = data_from(args, meta)
    example = example_inputs(splits.test, 1)
    result = profile(model, example, runtimes=tuple(args.runtimes), batch_sizes=tuple(args.batch_sizes),
                     threads=args.threads, artifact_path=args.model.removeprefix("hf:"))
    show(result, args.json, _profile_text(result))
    return EXIT_OK


def _profile_text(p: dict[str, Any]) -> str:
    lines = [f"params {p['params']:,}  nonzero {p['nonzero_params']:,}  FLOPs/sample {p['flops']:,}  MACs/sample {p['macs']:,}"]
    if p.get("artifact_bytes") is not None:
        lines.append(f"artifact bytes on disk {p['artifact_bytes']:,}")
    for rt, by_bs in p.get("latency", {}).items():
        for bs, lat in by_bs.items():
            if "p50_ms" not in lat:
                lines.append(f"{rt:12s} batch {bs:>4}: {lat.get('skipped', 'not measured')}")
                continue
            flag = "" if lat.get("reliable", True) else f"  UNRELIABLE (p90 {lat['p90_over_p50']:.1f}x p50)"
            lines.append(f"{rt:12s} batch {bs:>4}: p50 {lat['p50_ms']:.3f} ms  p90 {lat['p90_ms']:.3f} ms{flag}")
    lines.append(f"threads {p.get('threads')}")
    load = p.get("load") or {}
    if load.get("load_1min") is not None and load["load_1min"] > load.get("cpus", 1):
        lines.append(f"UNRELIABLE: machine load {load['load_1min']:.2f} (1-minute average) above its {load['cpus']} CPUs")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from condense.core.errors import ConfigError
    from condense.core.noise import quiet_known_noise
    from condense.data.loader import example_inputs

    quiet_known_noise()  # the ExecuTorch / LiteRT exporters import torchao (harmless .so / pytree notes)
    from condense.export import FORMATS, export
    from condense.export.formats import check_format

    formats = [check_format(f) for f in (args.format or ["onnx"])]  # all checked before any export runs
    if args.out and args.out_dir:
        raise ConfigError("give --out (one file) or --out-dir (a folder for every format), not both")
    if args.out and len(formats) > 1:
        raise ConfigError("--out names one file; with several formats use --out-dir")
    if args.out:
        targets = {formats[0]: check_out_file(args, args.out)}
    elif args.out_dir:
        folder = check_out_folder(args, args.out_dir, flag="--out-dir")
        targets = {fmt: folder / f"model{FORMATS[fmt]}" for fmt in formats}
    else:  # next to the model: model.<ext> in its folder, or <stem>.<ext> beside a .pt file
        src = Path(str(args.model).removeprefix("hf:"))
        base = src / "model" if src.is_dir() else src.with_suffix("")
        targets = {fmt: check_out_file(args, base.with_name(base.name + FORMATS[fmt])) for fmt in formats}
    model, meta = model_from_args(args)
    splits, _, _ = data_from(args, meta)
    rows = []
    for fmt, out in targets.items():
        res = export(model, example_inputs(splits.test, 1), out, fmt, precision=args.precision,
                     calibration=splits.train, samples=splits.test, atol=args.atol,
                     calibration_samples=args.calibration_samples)
        rows.append(res.to_dict())
    text = "\n".join(
        f"wrote {r['path']} ({r['bytes']:,} bytes, {r['format']} {r['precision']}); max |diff| {r['max_abs_diff']:.2e}"
        + (f", top-1 agreement {r['top1_agreement']:.1%}" if r["top1_agreement"] is not None else "")
        + (f"; batch-1 p50 {r['latency_ms']:.3f} ms in {r['runtime']} ({r['threads']} threads)"
           if r["latency_ms"] is not None else "")
        for r in rows)
    show(rows if len(rows) > 1 else rows[0], args.json, text)
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `condense` subcommands."""
    sp = sub.add_parser("eval", help="accuracy, top-k, macro P/R/F1, confusion matrix of a model or .onnx file")
    sp.add_argument("model", help="artifact folder, hf:<folder>, .onnx file or .pt checkpoint (see --model)")
    sp.add_argument("--trust-pickle", action="store_true")
    add_arch_opts(sp)
    add_data_opts(sp)
    sp.add_argument("--split", choices=["test", "val", "train"], default="test")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("profile", help="params, bytes on disk, FLOPs/MACs, latency per runtime")
    add_model_opts(sp)
    add_arch_opts(sp)
    add_data_opts(sp)
    sp.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"])
    sp.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256])
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_profile)

    sp = sub.add_parser("export", help="export to onnx / pt2 / executorch / tflite, checked against PyTorch in "
                                       "the format's runtime, with batch-1 latency")
    add_model_opts(sp)
    add_arch_opts(sp)
    add_data_opts(sp)
    sp.add_argument("--format", nargs="+", default=None,
                    help="one or more of onnx, pt2, executorch, tflite (default onnx)")
    sp.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"],
                    help="auto: int8 when the model is quantized, else fp32")
    sp.add_argument("--out", default=None, help="file to write (one format); default next to the model "
                                                "(model.<ext> in its folder)")
    sp.add_argument("--out-dir", default=None, help="folder for the files of several formats (new or empty; see --force)")
    add_force_opt(sp, "a non-empty --out-dir, or over an existing --out file (or model.<ext> next to the model)")
    sp.add_argument("--calibration-samples", type=int, default=128, help="training samples for int8 calibration")
    sp.add_argument("--atol", type=float, default=1e-4)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_export)

    for name, fn, help_ in (("models", cmd_models, "list the model zoo"), ("datasets", cmd_datasets, "list data sources")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(fn=fn)
