"""Pieces of the transformer int8 path that touch files and sessions, not configs.

The fp32 export of a condense Hugging Face wrapper (TorchScript exporter: ORT's transformer
optimizer recognises attention in its graphs, not in the dynamo exporter's, where it fuses only
BiasGelu), ORT's BERT fusion, matching Linear modules to ONNX nodes by weight value, batch
reading for calibration / held-out data, and output agreement between two ONNX files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.errors import RunError
from condense.core.select import select_modules
from condense.data.calibration import iter_calibration
from condense.evaluate.embedding import compare_embeddings
from condense.export import onnx as ex
from condense.export.onnx import onnx_session, ort_run
from condense.models.signature import as_batch, batch_size_of, output_name
from condense.quantize.graph import onnx_smooth as osm
from condense.quantize.graph.dynamic_onnx import quiet_ort_quantizer


def trim_padding(batch: dict[str, Any]) -> dict[str, Any]:
    """Drop trailing sequence positions that no row attends to (a slice of a padded batch)."""
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return batch
    length = max(1, int(mask.sum(1).max()))
    if length == mask.shape[1]:
        return batch
    return {k: (v[:, :length] if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == mask.shape[1] else v)
            for k, v in batch.items()}


def batches_of(data: Any, batch_size: int, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Batch dicts of `batch_size` samples from any data condense takes (a batch dict is sliced),
    padding trimmed per batch; read through `condense.quantize.calibration`."""
    if isinstance(data, dict):
        b = as_batch(data)
        n = batch_size_of(b) if limit is None else min(limit, batch_size_of(b))
        for i in range(0, n, batch_size):
            yield trim_padding({k: (v[i:min(i + batch_size, n)] if isinstance(v, torch.Tensor) and v.dim() else v)
                                for k, v in b.items()})
        return
    for b in iter_calibration(data, limit=limit, batch_size=batch_size):
        yield trim_padding(b)


# -- fp32 export and fusion --------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with ex.quiet_onnx_export(), quiet_ort_quantizer(), contextlib.redirect_stderr(io.StringIO()):
        yield


def export_fp32_graph(model: nn.Module, example: dict[str, torch.Tensor], path: Path, opset: int = 17) -> Path:
    """fp32 ONNX of the HF wrapper (TorchScript exporter, dynamic batch / sequence), parity-checked
    against PyTorch on the example and on a batch of 3 longer random sequences."""
    inputs = ex.export_inputs(model, example)
    device = ex.model_device(model)
    inputs.tensors = {k: v.to(device) for k, v in inputs.tensors.items()}
    trace = inputs
    if len(next(iter(inputs.tensors.values()))) == 1:  # batch 2, so the batch axis cannot specialise
        trace = dataclasses.replace(inputs, tensors={k: v.expand(2, *v.shape[1:]).contiguous()
                                                      for k, v in inputs.tensors.items()})
    was_training = model.training
    model.eval()
    try:
        with _quiet():
            ex.export_torchscript(model, trace, path, opset, output_name(model))
        other = {k: v.to(device) for k, v in ex.other_batch(inputs, 3).items()}
        ex.check_parity(model, path, [inputs.tensors, other], inputs, 1e-4, 1e-3, path)
    finally:
        model.train(was_training)
    return path


def fuse_graph(src: Path, dst: Path, model: nn.Module, example: dict[str, torch.Tensor]) -> dict[str, int]:
    """ORT's BERT optimizer on `src` -> `dst`; returns the fused op counts (checked exact in float)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    cfg = model.config
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):
        m = optimizer.optimize_model(str(src), model_type="bert", num_heads=int(cfg.num_attention_heads),
                                     hidden_size=int(cfg.hidden_size), opt_level=0,
                                     optimization_options=FusionOptions("bert"))
        m.save_model_to_file(str(dst))
    fused = ("Attention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "EmbedLayerNormalization", "Gelu")
    ops = Counter(n.op_type for n in m.model.graph.node if n.op_type in fused)
    diff = float(np.abs(ort_run(onnx_session(src), example) - ort_run(onnx_session(dst), example)).max())
    if diff > 1e-3:
        raise RunError(f"ORT's transformer fusion changed the fp32 outputs by {diff:.3g}; use fuse=false")
    return dict(sorted(ops.items()))


def linear_nodes(gi: osm.GraphIndex, uses: Sequence[osm.WeightUse], model: nn.Module) -> dict[str, str]:
    """Linear module name -> the ONNX node holding its weight, matched by value (W^T, or a block
    of a fused Attention's QKV weight); Linears the graph does not use are absent."""
    linears = {n: m.weight.detach().float().cpu().numpy().T for n, m in select_modules(model, None, None,
                                                                                          default=("Linear",)).items()
               if isinstance(m, nn.Linear)}
    out: dict[str, str] = {}
    for u in uses:
        w = gi.const(u.weight)
        if w is None:
            continue
        for name, wt in linears.items():
            if name in out or wt.shape[0] != w.shape[0] or w.shape[1] % wt.shape[1]:
                continue
            for j in range(0, w.shape[1], wt.shape[1]):
                block = w[:, j:j + wt.shape[1]]
                if block[0, 0] == wt[0, 0] and np.array_equal(block, wt):
                    out[name] = u.node.name
                    break
    return out


def rows_of(y: Any, batch: dict[str, Any]) -> np.ndarray:
    """One batch's output as rows: (N, D) embeddings / logits as they are, (B, T, H) token states as
    one row per attended token."""
    y = np.asarray(y, np.float32)
    if y.ndim == 3 and "attention_mask" in batch:
        y = y[np.asarray(batch["attention_mask"]).astype(bool)]
    return y.reshape(len(y), -1)


def output_rows(session: Any, batches: Sequence[dict[str, Any]]) -> np.ndarray:
    """A session's outputs on `batches` as rows (`rows_of`)."""
    return np.concatenate([rows_of(ort_run(session, b), b) for b in batches])


def agreement(got: np.ndarray, ref: np.ndarray, k: int = 10) -> dict[str, Any]:
    """Cosine / top-k neighbour agreement (`compare_embeddings`) plus the max |difference|."""
    res: dict[str, Any] = dict(compare_embeddings(got, ref, k=min(k, len(got) - 1))) if len(got) > 1 else {}
    res["max_abs_diff"] = float(np.abs(got - ref).max())
    return res


__all__ = ["agreement", "batches_of", "export_fp32_graph", "fuse_graph", "linear_nodes", "output_rows", "rows_of",
           "trim_padding"]
