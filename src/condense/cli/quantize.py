"""`condense quantize`: quantize an artifact, write the deployable ONNX file, and measure both.

    condense quantize runs/teacher --method static --observer mse --out runs/teacher-int8

One command per method of `QUANTIZERS`:

* static       calibrated PTQ (`ptq.py`) -> QDQ int8 ONNX (`onnx_int8.py`), run by onnxruntime as
               QLinearConv / QGemm integer kernels;
* qat          LSQ fake-quant (`qat.py`) trained with `fit()`, by default distilling the float
               model (alpha 0.9, T 4) -> `convert_qat` (BN folded) -> the same QDQ int8 ONNX;
* weight_only  packed low-bit Linear weights (`weight_only.py`, RTN or GPTQ) -> an ONNX file that
               keeps them packed (float compute; the gain is bytes, not speed);
* dynamic      int8 weights, activations quantized per batch (`dynamic.py`) -> ORT dynamic int8
               ONNX. Its speed is measured at every latency batch and a slow-down REFUSES the
               file (exit 4, nothing written) unless `--allow-slowdown` (then it is warned about).
* transformer  Hugging Face encoders (`transformer.py`): fp32 export, ORT fusion, SmoothQuant and
               outlier channels from calibration text, ORT dynamic int8 -> `model.int8.onnx`,
               measured by cosine agreement with the fp32 file (`cli_transformer.py`).

Every run prints the accuracy of the float model, of the PyTorch model after quantization (the
simulation, for static / qat) and of the ONNX file in onnxruntime, bytes on disk, the size ratio,
top-1 agreement between onnxruntime and PyTorch, and onnxruntime latency against the fp32 ONNX at
`--latency-batches` (medians, `--threads`). The output folder holds the artifact
(`model.safetensors` + `condense.json`, readable by `condense eval / profile / load`), the
deployable ONNX (`model.int8.onnx`, `model.dynamic.onnx` or `model.weight_only.onnx`) and the
fp32 reference ONNX (`model.fp32.onnx`).

What is measured and printed after quantizing: `condense.cli.quantize_results`.

Wiring (in `condense.cli.build_parser`, after the other sub-commands):

    from condense.cli.quantize import register as register_quantize
    register_quantize(sub)
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from condense.cli.quantize_results import measure_quality, onnx_agreement, summary_text
from condense.cli.quantize_transformer import FP32_NAME, quantize_transformer

METHODS = ("static", "dynamic", "weight_only", "qat", "transformer")
ONNX_NAMES = {"static": "model.int8.onnx", "qat": "model.int8.onnx", "dynamic": "model.dynamic.onnx",
              "weight_only": "model.weight_only.onnx", "transformer": "model.int8.onnx"}
DEFAULT_LATENCY_BATCHES = {"transformer": [1, 32]}  # others: [1, 256]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `quantize` sub-command to `condense`'s sub-parsers; returns its parser."""
    sp = subparsers.add_parser(
        "quantize", help="quantize an artifact (static / dynamic / weight_only / qat / transformer), write the deployable "
                         "ONNX, measure it",
        description="Quantize an artifact folder, write the deployable ONNX file and measure accuracy, bytes and "
                    "onnxruntime latency against fp32.")
    from condense.cli.common import add_arch_opts, add_force_opt

    sp.add_argument("model", metavar="MODEL", help="artifact folder written by condense, or a .pt checkpoint: a state_dict "
                                                    "with --model, a pickled model with --trust-pickle")
    sp.add_argument("--trust-pickle", action="store_true", help="allow loading a pickle checkpoint (runs code from the file)")
    add_arch_opts(sp)
    sp.add_argument("--method", choices=METHODS, default="static", help="quantization method (default: static)")
    sp.add_argument("--bits", type=int, default=8,
                    help="integer width 2..8 (default 8): weights and activations for static / qat, weights for "
                         "weight_only; dynamic is 8-bit only. The int8 ONNX needs 8-bit activations")
    sp.add_argument("--weight-bits", type=int, default=None, help="weight width 2..8 when it differs from --bits (e.g. w4a8)")
    sp.add_argument("--observer", default=None,
                    help="static: activation observer (minmax, moving_average, percentile, mse, entropy; default minmax)")
    sp.add_argument("--group-size", type=int, default=None, help="weight_only: input features per scale (0 = per row)")
    sp.add_argument("--algorithm", choices=["rtn", "gptq"], default=None, help="weight_only: rounding (default rtn)")
    sp.add_argument("--calibration-samples", type=int, default=None,
                    help="samples for calibration (static, default 512), QAT step init, GPTQ (default 128)")
    sp.add_argument("--calibration-split", choices=["train", "val", "test"], default="train",
                    help="split the calibration samples come from (default train; test is measured)")
    sp.add_argument("--set", action="append", metavar="K=V",
                    help="any field of the method's config, e.g. ignore=[features.0.0.conv] or per_channel=false (repeatable; wins over the flags)")
    sp.add_argument("--epochs", type=int, default=3, help="qat: training epochs (default 3)")
    sp.add_argument("--lr", type=float, default=5e-4, help="qat: learning rate (default 5e-4)")
    sp.add_argument("--seed", type=int, default=0, help="qat: training seed")
    sp.add_argument("--no-distill", action="store_true", help="qat: train on labels only (default: distill from the float model)")
    sp.add_argument("--allow-slowdown", action="store_true",
                    help="dynamic: keep the file (with a warning) when int8 is measured slower than fp32")
    sp.add_argument("--activation-dtype", choices=["uint8", "int8"], default="uint8",
                    help="static / qat ONNX: activation integer type (uint8 = ORT's U8S8 kernels, default)")
    sp.add_argument("--target", default="auto", metavar="CPU",
                    help="CPU family that will run the int8 file: auto (this one), avx2, avx512, avx512-vnni, avx-vnni, "
                         "arm64, x86-64; without VNNI, weights get 7 bits so ONNX Runtime's kernels cannot saturate")
    sp.add_argument("--data", default=None, help="dataset name (default: the model's own)")
    sp.add_argument("--data-arg", action="append", metavar="K=V", help="dataset option (repeatable)")
    sp.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads for the latency runs")
    sp.add_argument("--latency-batches", nargs="*", type=int, default=None, metavar="N",
                    help="batch sizes timed in onnxruntime (default 1 256; transformer 1 32; none = skip timing)")
    sp.add_argument("--out", required=True, help="output folder (artifact + ONNX files); new or empty, see --force")
    add_force_opt(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_quantize)
    return sp


# -- argument handling ---------------------------------------------------------------------------
def _check_bits(value: int | None, flag: str) -> None:
    from condense.core.errors import ConfigError

    if value is not None and not 2 <= value <= 8:
        raise ConfigError(f"{flag} must be in 2..8, got {value}")


def _calibration(args: argparse.Namespace, splits: Any, default: int) -> Any:
    """The calibration inputs (N samples of the chosen split); empty -> ConfigError."""
    from condense.core.errors import ConfigError
    from condense.data.loader import heldout_inputs

    n = default if args.calibration_samples is None else args.calibration_samples
    if n < 1:
        raise ConfigError(f"--calibration-samples must be >= 1, got {n} (an empty calibration set cannot set any range)")
    data = getattr(splits, args.calibration_split)
    if data is None or len(data) == 0:
        raise ConfigError(f"the calibration split {args.calibration_split!r} is empty; choose another --calibration-split")
    return heldout_inputs(data, n)


def _config(args: argparse.Namespace) -> Any:
    """The method's config from the flags, then `--set` (which wins); validated by the config class."""
    from condense.cli.common import kv
    from condense.core.errors import ConfigError
    from condense.quantize import QuantizeConfig
    from condense.quantize.dynamic import DynamicConfig
    from condense.quantize.modules.qat import QATConfig
    from condense.quantize.modules.weight_only import WeightOnlyConfig

    _check_bits(args.bits, "--bits")
    _check_bits(args.weight_bits, "--weight-bits")
    extra = kv(args.set, "--set")
    wbits = args.weight_bits or args.bits
    where = f"condense quantize --method {args.method}"
    misplaced = [flag for flag, value, methods in (
        ("--observer", args.observer, ("static",)), ("--group-size", args.group_size, ("weight_only",)),
        ("--algorithm", args.algorithm, ("weight_only",))) if value is not None and args.method not in methods]
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)} does not apply to --method {args.method}")
    if args.method == "static":
        raw: dict[str, Any] = {"method": "static", "weight_bits": wbits, "activation_bits": args.bits,
                               "target": args.target}
        if args.observer is not None:
            raw["observer"] = args.observer
        if args.calibration_samples is not None:
            raw["calibration_samples"] = args.calibration_samples
        return QuantizeConfig.from_dict({**raw, **extra}, where=where)
    if args.method == "qat":
        raw = {"bits": wbits, "act_bits": args.bits}
        if args.no_distill:
            raw["distill"] = False
        return QATConfig.from_dict({**raw, **extra}, where=where)
    if args.method == "weight_only":
        raw = {"bits": wbits}
        if args.group_size is not None:
            raw["group_size"] = args.group_size
        if args.algorithm is not None:
            raw["algorithm"] = args.algorithm
        return WeightOnlyConfig.from_dict({**raw, **extra}, where=where)
    if wbits != 8 or args.bits != 8:
        raise ConfigError(f"--method {args.method} is int8 only (onnxruntime's dynamic quantization); drop --bits / --weight-bits")
    if args.method == "transformer":
        from condense.quantize.transformer import TransformerInt8Config

        raw = {"target": args.target}
        if args.calibration_samples is not None:
            raw["calibration_samples"] = args.calibration_samples
        return TransformerInt8Config.from_dict({**raw, **extra}, where=where)
    extra.setdefault("threads", args.threads)
    return DynamicConfig.from_dict({"refuse_slowdown": not args.allow_slowdown, "target": args.target, **extra},
                                   where=where)


# -- the methods ---------------------------------------------------------------------------------
def _qat_train(args: argparse.Namespace, model: Any, cfg: Any, splits: Any) -> tuple[Any, dict[str, Any]]:
    """`qat_fit`: prepare -> fit (distilling the float model unless --no-distill) -> convert."""
    from condense.core.errors import ConfigError
    from condense.core.seed import seed_everything
    from condense.data.loader import example_inputs
    from condense.quantize.modules.qat_fit import qat_fit
    from condense.train import TrainConfig

    if args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    seed_everything(args.seed)
    train = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=64, seed=args.seed,
                        progress="off" if args.json else "auto")
    result = qat_fit(model, splits.train, cfg, train, splits.val, calibration=_calibration(args, splits, 256),
                     example=example_inputs(splits.test, 1))
    info = {"epochs": args.epochs, "lr": args.lr, "distilled": result.distilled, "best_epoch": result.fit.best_epoch,
            **result.schedule}
    return result.model, info


def cmd_quantize(args: argparse.Namespace) -> int:
    from condense.artifacts import artifact_bytes
    from condense.cli.common import (
        EXIT_OK,
        check_out_folder,
        data_from,
        model_from_args,
        save_artifact,
        show,
    )
    from condense.core.errors import ConfigError
    from condense.data.loader import example_inputs, heldout_inputs
    from condense.export.onnx import export_onnx, onnx_file_bytes
    from condense.quantize import export_int8_onnx, quant_wrappers, quantize
    from condense.quantize.attached import quant_report_of
    from condense.quantize.graph.onnx_int8 import ort_latency_comparison

    check_out_folder(args, args.out)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.latency_batches is None:
        args.latency_batches = DEFAULT_LATENCY_BATCHES.get(args.method, [1, 256])
    if any(b < 1 for b in args.latency_batches):
        raise ConfigError(f"--latency-batches must be >= 1, got {args.latency_batches}")
    cfg = _config(args)
    model, meta = model_from_args(args, need_spec=True)
    model.eval()
    if args.method == "transformer":
        return quantize_transformer(args, cfg, model, meta)
    splits, data_name, data_kwargs = data_from(args, meta)
    test = splits.test
    example = example_inputs(test, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, fp32_path = out / ONNX_NAMES[args.method], out / FP32_NAME
    notes: list[str] = []
    info: dict[str, Any] = {}
    latency: dict[str, Any] | None = None
    batches = tuple(args.latency_batches)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.method == "static":
            qmodel = quantize(model, cfg, calibration=_calibration(args, splits, cfg.calibration_samples))
            report = quant_report_of(qmodel)
            if report is not None:
                info["report"] = report.to_dict()
        elif args.method == "qat":
            qmodel, info["qat"] = _qat_train(args, model, cfg, splits)
        elif args.method == "weight_only":
            calib = None
            if cfg.algorithm == "gptq":
                calib = list(_calibration(args, splits, 128).split(64))
            qmodel = quantize(model, cfg, calibration=calib)
        else:
            qmodel = quantize(model, cfg)

        deployed: Path | None = onnx_path
        agreement: tuple[float | None, float | None] = (None, None)
        if args.method in ("static", "qat") and quant_wrappers(qmodel):
            low_act = sorted({w.input_fq.spec.bits for w in quant_wrappers(qmodel).values()} - {8})
            if low_act:
                deployed = None
                notes.append(f"{'/'.join(map(str, low_act))}-bit activations are simulated only: the int8 ONNX "
                             "(onnxruntime integer kernels) needs 8-bit activations, so no ONNX file was written")
            else:
                res = export_int8_onnx(qmodel, example, onnx_path, heldout=heldout_inputs(test), fp32_path=fp32_path,
                                       activation_dtype=args.activation_dtype, threads=args.threads,
                                       latency_batches=batches or None, target=args.target, reference=model)
                agreement = (res.top1_agreement, res.max_abs_diff)
                latency, info["ort_ops"] = res.latency, res.ort_ops
                notes += res.notes
        elif args.method == "dynamic":
            from condense.quantize.dynamic import check_dynamic_speed, export_dynamic_int8

            export_dynamic_int8(model, example, onnx_path, cfg, check_speed=False, keep_fp32=fp32_path)
            latency = {"threads": cfg.threads, "batches": {}, "notes": []} if batches else None
            try:
                for bs in batches:  # refuses (RunError, exit 4) on a slow-down unless --allow-slowdown
                    tiled = ({k: v.repeat(bs, *[1] * (v.dim() - 1)) for k, v in example.items()} if isinstance(example, dict)
                             else example.repeat(bs, *[1] * (example.dim() - 1)))  # a token batch dict, or a tensor
                    sp = check_dynamic_speed(fp32_path, onnx_path, tiled,
                                             cfg.threads, refuse_slowdown=cfg.refuse_slowdown, max_ratio=cfg.max_ratio)
                    latency["batches"][int(bs)] = {"fp32_ms": sp["fp32_ms"], "int8_ms": sp["int8_ms"],  # type: ignore[index]
                                                   "int8_over_fp32": sp["ratio"]}
            except Exception:
                onnx_path.unlink(missing_ok=True)
                fp32_path.unlink(missing_ok=True)
                raise
            if not batches:
                notes.append("speed not measured (no --latency-batches): a dynamic-int8 slow-down would go unnoticed")
            agreement = onnx_agreement(qmodel, onnx_path, heldout_inputs(test))
        else:  # weight_only, or weight-only QAT (no activation quantizers): float compute, packed weights
            export_onnx(qmodel, example, onnx_path)
            export_onnx(model, example, fp32_path)
            agreement = onnx_agreement(qmodel, onnx_path, heldout_inputs(test))
            notes.append("weight-only: weights stay packed in the ONNX file and are dequantized at run time "
                         "(float compute); the gain is bytes on disk, not speed")
        if deployed is not None and latency is None and batches:
            latency = ort_latency_comparison(onnx_path, fp32_path, example, batch_sizes=batches, threads=args.threads)
            notes += latency["notes"]
    # condense's own warnings (skipped layers, unfolded BatchNorm, a measured slow-down) become notes;
    # library chatter (exporter deprecations and the like) is dropped.
    notes += [str(w.message) for w in caught if "condense" in Path(w.filename).parts
              and not issubclass(w.category, (DeprecationWarning, FutureWarning))]

    fp32_metrics, q_metrics, ort_metrics, quality = measure_quality(model, qmodel, onnx_path if deployed is not None else None,
                                                             test, args.threads)
    acc = {"fp32": fp32_metrics.get("accuracy"), "quantized_torch": q_metrics.get("accuracy"),
           "quantized_onnxruntime": None if ort_metrics is None else ort_metrics.get("accuracy")}
    deployed_acc = acc["quantized_onnxruntime"] if ort_metrics is not None else acc["quantized_torch"]
    summary: dict[str, Any] = {
        "method": args.method,
        "artifact": str(out),
        "onnx": None if deployed is None else str(onnx_path),
        "fp32_onnx": str(fp32_path) if fp32_path.is_file() else None,
        "accuracy": acc,
        "quality": quality,
        "drop_pt": None if acc["fp32"] is None or deployed_acc is None else 100.0 * (acc["fp32"] - deployed_acc),
        "bytes": {"fp32_onnx": onnx_file_bytes(fp32_path) if fp32_path.is_file() else None,
                  "onnx": onnx_file_bytes(onnx_path) if deployed is not None else None},
        "size_ratio": None,
        "agreement": {"top1_pct": agreement[0], "max_abs_diff": agreement[1]},
        "latency": latency,
        "config": cfg.to_dict(),
        "notes": notes,
        **info,
    }
    if summary["bytes"]["onnx"] and summary["bytes"]["fp32_onnx"]:
        summary["size_ratio"] = summary["bytes"]["onnx"] / summary["bytes"]["fp32_onnx"]

    # The artifact: the quantized model (static / qat / weight_only: its edit log rebuilds the
    # quantized layers on load). Torch's dynamic-int8 modules hold packed C++ objects that
    # safetensors cannot store, so for `dynamic` the artifact is the float model and the
    # deliverable is the ONNX file.
    saved = model if args.method == "dynamic" else qmodel
    if args.method == "dynamic":
        notes.append("artifact holds the float model (torch dynamic-int8 layers cannot be stored as safetensors); "
                     f"the deployable int8 model is {onnx_path.name}")
    save_artifact(saved, out,
                  metrics={"test": {"fp32": fp32_metrics, "quantized_torch": q_metrics, "onnxruntime": ort_metrics}},
                  extra={"data": {"name": data_name, "kwargs": data_kwargs}, "source": str(args.model),
                         "quantize": {k: v for k, v in summary.items() if k not in ("report",)}})
    summary["bytes"]["artifact"] = artifact_bytes(out)
    show(summary, args.json, summary_text(summary))
    return EXIT_OK
