"""Evaluation and profiling: metrics on PyTorch or ONNX Runtime, params, FLOPs, bytes, latency."""
from condense.evaluate.decoder import decoder_metrics
from condense.evaluate.embedding import compare_embeddings
from condense.evaluate.metrics import classification_metrics, evaluate, predict, predict_logits
from condense.evaluate.profile import (
    count_flops,
    count_parameters,
    latency_table,
    measure_latency,
    path_bytes,
    profile,
)

__all__ = [
    "classification_metrics",
    "compare_embeddings",
    "count_flops",
    "count_parameters",
    "decoder_metrics",
    "evaluate",
    "latency_table",
    "measure_latency",
    "path_bytes",
    "predict",
    "predict_logits",
    "profile",
]
