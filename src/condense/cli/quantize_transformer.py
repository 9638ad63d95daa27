"""`condense quantize MODEL_DIR --method transformer`: a Hugging Face encoder -> int8 ONNX, measured.

    condense quantize runs/minilm --method transformer --data text --data-arg path=corpus.jsonl --out runs/minilm-int8

Data: `--data` / `--data-arg` as for every command (the tokenizer defaults to the model's own
folder); without them, the data the artifact records, else the standard library's prose
(`stdlib-text`, 2,000 paragraphs; a note says so, since calibration text should look like the
text the model will embed). Calibration reads `--calibration-samples` samples (default 256) of
`--calibration-split`; the int8 file is compared with the fp32 file on up to 512 test samples
(mean / min cosine, top-10 neighbour overlap; top-1 agreement for classifiers) and timed against
it at `--latency-batches` (default 1 32). The artifact folder holds the float model (dynamic int8
runs in ONNX Runtime, not in PyTorch), `model.int8.onnx` and `model.fp32.onnx`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command line's parser imports this module: no torch at import time
    from torch import nn

STDLIB_LIMIT = 2000

INT8_NAME = "model.int8.onnx"
FP32_NAME = "model.fp32.onnx"  # the fp32 reference ONNX, as every quantize method writes it


def _data(args: argparse.Namespace, model: nn.Module, meta: dict[str, Any] | None) -> tuple[Any, str, dict[str, Any], list[str]]:
    from condense.cli.common import kv
    from condense.data import load_dataset

    notes: list[str] = []
    name, kwargs = args.data, kv(args.data_arg, "--data-arg")
    if name is None and meta and meta.get("data"):
        name, kwargs = meta["data"]["name"], {**meta["data"].get("kwargs", {}), **kwargs}
    if name is None:
        name, kwargs = "stdlib-text", {"limit": STDLIB_LIMIT, **kwargs}
        notes.append(f"calibrated and measured on the standard library's prose (stdlib-text, {STDLIB_LIMIT} paragraphs); "
                     "pass --data text --data-arg path=<your .jsonl/.csv/.txt> to calibrate on your own text")
    if name in ("text", "stdlib-text") and "tokenizer" not in kwargs:
        kwargs["tokenizer"] = str(model.source_dir)  # type: ignore[union-attr]
    return load_dataset(name, **kwargs), name, kwargs, notes


def quantize_transformer(args: argparse.Namespace, cfg: Any, model: nn.Module, meta: dict[str, Any] | None) -> int:
    """Run the transformer int8 path for `condense quantize` and print / save its summary."""
    import numpy as np

    from condense.artifacts import artifact_bytes
    from condense.cli.common import EXIT_OK, save_artifact, show
    from condense.core.errors import ConfigError
    from condense.data.loader import example_inputs
    from condense.export.onnx import onnx_session
    from condense.quantize import export_int8_onnx, quantize
    from condense.quantize.transformer import batches_of, check_hf_model, output_rows

    check_hf_model(model, "condense quantize --method transformer")
    splits, data_name, data_kwargs, notes = _data(args, model, meta)
    calib = getattr(splits, args.calibration_split)
    if calib is None or len(calib) == 0:
        raise ConfigError(f"the calibration split {args.calibration_split!r} is empty; choose another --calibration-split")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, fp32_path = out / INT8_NAME, out / FP32_NAME
    qmodel = quantize(model, cfg, calibration=calib if cfg.needs_calibration else None)
    res = export_int8_onnx(qmodel, example_inputs(splits.test, 1), onnx_path, heldout=splits.test, fp32_path=fp32_path,
                           threads=args.threads, latency_batches=tuple(args.latency_batches) or None)
    details = res.details or {}
    quality = dict(details.get("agreement", {}))
    if getattr(model, "task", "") == "sequence-classification":  # logits: also the predicted class
        batches = list(batches_of(splits.test, 32, 512))
        a, b = output_rows(onnx_session(onnx_path), batches), output_rows(onnx_session(fp32_path), batches)
        quality["top1_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    notes += res.notes
    build = details.get("transformer", {})
    summary: dict[str, Any] = {
        "method": "transformer", "artifact": str(out), "onnx": str(onnx_path), "fp32_onnx": str(fp32_path),
        "data": data_name, "calibration_samples": build.get("calibration_samples"),
        "agreement": quality, "bytes": {"onnx": res.bytes, "fp32_onnx": res.fp32_bytes}, "size_ratio": res.size_ratio,
        "latency": res.latency, "config": cfg.to_dict(), "ort_ops": res.ort_ops,
        "transformer": {k: build.get(k) for k in ("graph", "fusions", "op_types", "int8_ops", "float_nodes")} |
                       {"smoothed": len(build.get("smoothed", [])), "outlier_splits": len(build.get("outlier_splits", []))},
        "notes": notes + ["artifact holds the float model (dynamic int8 runs in onnxruntime); the deployable int8 model "
                          f"is {onnx_path.name}"],
    }
    save_artifact(model, out, extra={"data": {"name": data_name, "kwargs": data_kwargs}, "source": str(args.model),
                                     "quantize": summary})
    summary["bytes"]["artifact"] = artifact_bytes(out)
    mean = quality.get("mean_cosine", float("nan"))
    lines = [f"condense quantize --method transformer  ->  {out}",
             f"agreement int8 vs fp32 onnxruntime on {quality.get('n', 0)} test rows: mean cosine {mean:.5f}   "
             f"min {quality.get('min_cosine', float('nan')):.5f}   top-10 overlap {quality.get('topk_overlap', float('nan')):.3f}"
             + (f"   top-1 {100 * quality['top1_agreement']:.2f}%" if "top1_agreement" in quality else ""),
             f"bytes     {onnx_path.name} {res.bytes:,}   {FP32_NAME} {res.fp32_bytes:,}   ratio {res.size_ratio:.3f}",
             f"graph     {build.get('graph')}: {summary['transformer']['smoothed']} smoothed tensors, "
             f"{summary['transformer']['outlier_splits']} outlier splits, int8 ops {build.get('int8_ops')}"]
    for bs, row in (res.latency or {}).get("batches", {}).items():
        lines.append(f"latency   batch {bs:>4}: fp32 {row['fp32_ms']:.3f} ms   int8 {row['int8_ms']:.3f} ms   "
                     f"x{row['int8_over_fp32']:.2f}  (onnxruntime, {res.latency['threads']} threads, median)")  # type: ignore[index]
    lines += [f"note: {n}" for n in summary["notes"]]
    if not np.isfinite(mean):
        lines.append("note: fewer than 2 test samples: no agreement measured")
    show(summary, args.json, "\n".join(lines))
    return EXIT_OK
