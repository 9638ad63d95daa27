"""What `condense quantize` measures and prints once a model is quantized: the agreement of the
ONNX file with PyTorch, the quality of each model for its kind of output (accuracy, perplexity,
cosine to the float model), and the text summary. Imports are lazy, as everywhere in the command
line (`condense --help` never loads torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from condense.cli.quantize_transformer import FP32_NAME


def onnx_agreement(qmodel: Any, onnx_path: Path, x: Any) -> tuple[float, float]:
    """(top-1 agreement %, max |diff|) of the ONNX file in onnxruntime and `qmodel` in PyTorch."""
    import numpy as np

    from condense.evaluate import predict_logits

    ref = predict_logits(qmodel, x).float().numpy()
    got = predict_logits(str(onnx_path), x).float().numpy()
    return float(100.0 * (ref.argmax(-1) == got.argmax(-1)).mean()), float(np.abs(ref - got).max())


def measure_quality(model: Any, qmodel: Any, onnx_path: Path | None, test: Any, threads: int | None
             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Test metrics of the float model, the quantized PyTorch model and the ONNX file, and the
    quality line for this kind of output: accuracy (class scores), perplexity and token agreement
    with the float model (a decoder), mean cosine to the float model (an encoder's embeddings)."""
    from condense.evaluate import evaluate
    from condense.evaluate.decoder import is_decoder
    from condense.models.hf import is_encoder

    ref = model if is_decoder(model) or is_encoder(model) else None
    fp = evaluate(model, test)
    q = evaluate(qmodel, test, reference=ref)
    ort = None if onnx_path is None else evaluate(str(onnx_path), test, reference=ref, threads=threads)
    if is_decoder(model):
        quality = {"metric": "perplexity", "fp32": fp["perplexity"], "quantized_torch": q["perplexity"],
                   "quantized_onnxruntime": None if ort is None else ort["perplexity"],
                   "token_agreement": (ort or q)["token_agreement"], "token_kl": (ort or q)["token_kl"]}
    elif is_encoder(model):
        quality = {"metric": "mean_cosine_to_fp32", "fp32": 1.0,
                   "quantized_torch": q["reference"]["mean_cosine"],
                   "quantized_onnxruntime": None if ort is None else ort["reference"]["mean_cosine"]}
    else:
        quality = {"metric": "accuracy", "fp32": fp.get("accuracy"), "quantized_torch": q.get("accuracy"),
                   "quantized_onnxruntime": None if ort is None else ort.get("accuracy")}
    return fp, q, ort, quality


def _quality_line(s: dict[str, Any]) -> str:
    a, qual = s["accuracy"], s.get("quality") or {"metric": "accuracy"}
    if qual["metric"] == "accuracy":
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        drop = "" if s["drop_pt"] is None else f"   drop {s['drop_pt']:+.2f} pt"
        return (f"accuracy  fp32 {pct(a['fp32'])}   quantized (PyTorch) {pct(a['quantized_torch'])}   "
                f"onnxruntime {pct(a['quantized_onnxruntime'])}{drop}")
    num = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    line = (f"{qual['metric']}  fp32 {num(qual['fp32'])}   quantized (PyTorch) {num(qual['quantized_torch'])}   "
            f"onnxruntime {num(qual['quantized_onnxruntime'])}")
    if "token_agreement" in qual:
        line += f"   token agreement with fp32 {qual['token_agreement']:.4f} (KL {qual['token_kl']:.3g})"
    return line


def summary_text(s: dict[str, Any]) -> str:
    b = s["bytes"]
    lines = [f"condense quantize --method {s['method']}  ->  {s['artifact']}", _quality_line(s)]
    if b.get("onnx"):
        lines.append(f"bytes     {Path(s['onnx']).name} {b['onnx']:,}   {FP32_NAME} {b['fp32_onnx']:,}   "
                     f"ratio {s['size_ratio']:.3f}   artifact folder {b['artifact']:,}")
    ag = s["agreement"]
    if ag["top1_pct"] is not None:
        lines.append(f"agreement onnxruntime vs PyTorch: top-1 {ag['top1_pct']:.2f}%   max |diff| {ag['max_abs_diff']:.3g}")
    lat = s.get("latency")
    if lat:
        for bs, row in lat["batches"].items():
            lines.append(f"latency   batch {bs:>4}: fp32 {row['fp32_ms']:.3f} ms   quantized {row['int8_ms']:.3f} ms   "
                         f"x{row['int8_over_fp32']:.2f}  (onnxruntime, {lat['threads']} threads, median)")
    lines += [f"note: {n}" for n in s["notes"]]
    return "\n".join(lines)
