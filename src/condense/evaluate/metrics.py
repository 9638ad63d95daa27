"""Classification metrics, and `evaluate(model_or_onnx, data)` on PyTorch or ONNX Runtime.

The same metric code runs on logits from either backend, so a PyTorch model and its exported
ONNX file are scored identically (including the cross-entropy loss).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset, iterate_batches
from condense.export.onnx import model_device, onnx_session, ort_run, output_tensor


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def classification_metrics(
    logits: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray | Sequence[int],
    num_classes: int | None = None,
    topk: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, macro precision / recall / F1 and the confusion matrix.

    - `logits`: (N, C) scores; the prediction is the arg-max (first index on ties).
    - `num_classes`: defaults to max(C, largest target + 1); must be >= C.
    - `topk`: for each k with 1 < k < C a key `top{k}_accuracy` (k=1 is `accuracy`; k >= C
      would be 1.0 by construction and is left out).
    - Macro averages run over the classes that occur in the targets or the predictions (as
      scikit-learn's `average="macro"` does); a 0/0 precision, recall or F1 counts as 0.
    - `confusion_matrix[i][j]`: samples of true class i predicted as j (num_classes x num_classes).
    - `per_class`: precision, recall, f1 and support lists indexed by class.
    """
    scores = _as_numpy(logits)
    y = _as_numpy(targets)
    if scores.ndim != 2:
        raise ConfigError(f"metrics: logits must be (N, C), got shape {scores.shape}")
    n, c = scores.shape
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"metrics: targets must be (N,) with N={n}, got shape {y.shape}")
    if n == 0:
        raise ConfigError("metrics: no samples")
    if c < 1:
        raise ConfigError("metrics: logits have no classes")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ConfigError("metrics: targets must be integer class ids")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ConfigError(f"metrics: negative class id {int(y.min())} in targets")
    k_classes = int(num_classes) if num_classes is not None else max(c, int(y.max()) + 1)
    if k_classes < c:
        raise ConfigError(f"metrics: num_classes={k_classes} but logits have {c} columns")
    if y.max() >= k_classes:
        raise ConfigError(f"metrics: class id {int(y.max())} in targets but num_classes={k_classes}")

    pred = scores.argmax(axis=1).astype(np.int64)
    out: dict[str, Any] = {"n": int(n), "num_classes": k_classes}
    out["accuracy"] = float(np.mean(pred == y))
    order: np.ndarray | None = None
    for k in sorted({int(k) for k in topk}):
        if k < 1:
            raise ConfigError(f"metrics: top-k needs k >= 1, got {k}")
        if k == 1 or k >= c:
            continue
        if order is None:
            order = np.argsort(-scores, axis=1, kind="stable")
        out[f"top{k}_accuracy"] = float(np.mean((order[:, :k] == y[:, None]).any(axis=1)))

    cm = np.bincount(y * k_classes + pred, minlength=k_classes * k_classes).reshape(k_classes, k_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = predicted + support  # 2tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    present = (predicted + support) > 0
    out["precision_macro"] = float(precision[present].mean())
    out["recall_macro"] = float(recall[present].mean())
    out["f1_macro"] = float(f1[present].mean())
    out["confusion_matrix"] = cm.tolist()
    out["per_class"] = {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.astype(np.int64).tolist(),
    }
    return out


def _is_session(obj: Any) -> bool:
    return hasattr(obj, "run") and hasattr(obj, "get_inputs") and not isinstance(obj, nn.Module)


def _as_dataset(data: ArrayDataset | torch.Tensor | np.ndarray) -> ArrayDataset:
    if isinstance(data, ArrayDataset):
        return data
    if isinstance(data, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(data)
        return ArrayDataset(x, None, torch.arange(len(x)))
    raise ConfigError(f"expected an ArrayDataset or a tensor of inputs, got {type(data).__name__}")


def _predict_torch(
    model: nn.Module, data: ArrayDataset, batch_size: int, device: str | torch.device | None, threads: int | None
) -> torch.Tensor:
    was_training = model.training
    home = model_device(model)
    dev = torch.device(device) if device is not None else home
    old_threads = torch.get_num_threads()
    moved = dev != home
    outs: list[torch.Tensor] = []
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        if moved:
            model.to(dev)
        model.eval()
        with torch.no_grad():
            for batch in iterate_batches(data, batch_size):
                out = output_tensor(model(batch["input"].to(dev)))
                outs.append(out.detach().float().cpu())
    finally:
        model.train(was_training)
        if moved:
            model.to(home)
        torch.set_num_threads(old_threads)
    return torch.cat(outs)


def _predict_onnx(session: Any, data: ArrayDataset, batch_size: int) -> torch.Tensor:
    fixed = session.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None
    outs: list[torch.Tensor] = []
    for batch in iterate_batches(data, fixed or batch_size):
        x = batch["input"]
        m = len(x)
        if fixed is not None and m < fixed:  # a model exported with a fixed batch: pad, then trim
            x = torch.cat([x, x[-1:].expand(fixed - m, *x.shape[1:])])
        outs.append(torch.from_numpy(np.asarray(ort_run(session, x), dtype=np.float32))[:m])
    return torch.cat(outs)


def _predict(
    model_or_onnx: Any,
    data: ArrayDataset,
    batch_size: int,
    device: str | torch.device | None,
    threads: int | None,
) -> tuple[torch.Tensor, str]:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if len(data) == 0:
        raise ConfigError("no samples to run the model on")
    if isinstance(model_or_onnx, nn.Module):
        return _predict_torch(model_or_onnx, data, batch_size, device, threads), "torch"
    if isinstance(model_or_onnx, (str, os.PathLike)):
        return _predict_onnx(onnx_session(model_or_onnx, threads=threads), data, batch_size), "onnxruntime"
    if _is_session(model_or_onnx):
        return _predict_onnx(model_or_onnx, data, batch_size), "onnxruntime"
    raise ConfigError(
        "expected a torch nn.Module, an ONNX file path or an onnxruntime.InferenceSession, "
        f"got {type(model_or_onnx).__name__}"
    )


def predict_logits(
    model_or_onnx: Any,
    data: ArrayDataset | torch.Tensor | np.ndarray,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Logits (N, C) float32 on CPU for every input, in order.

    `model_or_onnx`: an nn.Module (run in eval mode under no_grad on `device`, default the
    model's own device; its train/eval mode, device and torch's thread count are restored
    afterwards), an ONNX file path or an onnxruntime.InferenceSession (the input name comes
    from the session; `device` is ignored, `threads` applies to sessions made from a path).
    """
    logits, _ = _predict(model_or_onnx, _as_dataset(data), batch_size, device, threads)
    return logits


def evaluate(
    model_or_onnx: Any,
    data: ArrayDataset,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    topk: Sequence[int] = (1, 5),
    threads: int | None = None,
) -> dict[str, Any]:
    """Score a model (PyTorch or ONNX) on labelled data.

    Returns `classification_metrics(...)` plus `loss` (mean cross entropy, computed the same way
    for both backends) and `runtime` ("torch" or "onnxruntime").
    """
    if not isinstance(data, ArrayDataset):
        raise ConfigError(f"evaluate: expected an ArrayDataset, got {type(data).__name__}")
    if data.targets is None:
        raise ConfigError("evaluation needs labelled data (this dataset has no targets)")
    logits, runtime = _predict(model_or_onnx, data, batch_size, device, threads)
    targets = data.targets.detach().cpu().long()
    c = logits.shape[1] if logits.dim() == 2 else -1
    if logits.dim() != 2 or len(logits) != len(targets):
        raise ConfigError(f"evaluate: model returned logits of shape {tuple(logits.shape)} for {len(targets)} samples")
    if int(targets.max()) >= c:
        raise ConfigError(f"evaluate: targets contain class {int(targets.max())} but the model outputs {c} logits")
    out = classification_metrics(logits, targets, topk=topk)
    out["loss"] = float(F.cross_entropy(logits.double(), targets).item())
    out["runtime"] = runtime
    return out
