"""Classification metrics, and `evaluate(model_or_onnx, data)` on PyTorch or ONNX Runtime.

`data` is anything `condense.data.loader.as_source` takes; each batch is a dict and the model is
called as its input signature declares (`condense.models.signature.call_model`).

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
from condense.data.loader import BatchSource, as_source
from condense.evaluate.decoder import decoder_metrics, is_decoder
from condense.evaluate.embedding import compare_embeddings
from condense.export.onnx import model_device, onnx_session, ort_run, output_tensor
from condense.models.hf import is_encoder
from condense.models.signature import batch_size_of, batch_to, call_model, model_inputs


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


def _predict_torch(
    model: nn.Module, source: BatchSource, batch_size: int, device: str | torch.device | None, threads: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    was_training = model.training
    home = model_device(model)
    dev = torch.device(device) if device is not None else home
    old_threads = torch.get_num_threads()
    moved = dev != home
    outs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        if moved:
            model.to(dev)
        model.eval()
        with torch.no_grad():
            for batch in source.batches(batch_size):
                if "target" in batch:
                    targets.append(batch["target"])
                out = output_tensor(call_model(model, batch_to(model_inputs(model, batch), dev)))
                outs.append(out.detach().float().cpu())
    finally:
        model.train(was_training)
        if moved:
            model.to(home)
        torch.set_num_threads(old_threads)
    return _cat_outputs(outs), (torch.cat(targets) if targets else None)


def _cat_outputs(outs: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch outputs; per-token outputs of batches padded to different lengths are
    right-padded with zeros to the longest (the padding positions are masked out by the model)."""
    if len({tuple(o.shape[1:]) for o in outs}) <= 1:
        return torch.cat(outs)
    if len({o.dim() for o in outs}) != 1 or outs[0].dim() < 2:
        raise ConfigError(f"model outputs of different shapes per batch: {[tuple(o.shape) for o in outs[:3]]}")
    longest = max(o.shape[1] for o in outs)
    return torch.cat([F.pad(o, (0, 0) * (o.dim() - 2) + (0, longest - o.shape[1])) for o in outs])


def _predict_onnx(session: Any, source: BatchSource, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    first = session.get_inputs()[0].shape[0]
    fixed = first if isinstance(first, int) and first > 0 else None
    outs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for batch in source.batches(fixed or batch_size):
        if "target" in batch:
            targets.append(batch["target"])
        m = batch_size_of({k: v for k, v in batch.items() if k not in ("target", "index")})
        if fixed is not None and m < fixed:  # a model exported with a fixed batch: pad, then trim
            batch = {k: torch.cat([v, v[-1:].expand(fixed - m, *v.shape[1:])]) if isinstance(v, torch.Tensor) and v.dim()
                     else v for k, v in batch.items()}
        outs.append(torch.from_numpy(np.asarray(ort_run(session, batch), dtype=np.float32))[:m])
    return _cat_outputs(outs), (torch.cat(targets) if targets else None)


def predict(
    model_or_onnx: Any,
    data: Any,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Run a model over `data` in order: `(outputs, targets or None, runtime)`.

    `data`: anything `condense.data.loader.as_source` takes (ArrayDataset, torch Dataset,
    DataLoader, tensor of inputs). The model is called with each batch as its input signature
    says (`condense.models.signature`); an ONNX model is fed the batch fields named like its
    inputs (a single-input file takes the `input` field). Outputs are float32 on the CPU.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    source = as_source(data)
    if len(source) == 0:
        raise ConfigError("no samples to run the model on")
    if isinstance(model_or_onnx, nn.Module):
        return (*_predict_torch(model_or_onnx, source, batch_size, device, threads), "torch")
    if isinstance(model_or_onnx, (str, os.PathLike)):
        return (*_predict_onnx(onnx_session(model_or_onnx, threads=threads), source, batch_size), "onnxruntime")
    if _is_session(model_or_onnx):
        return (*_predict_onnx(model_or_onnx, source, batch_size), "onnxruntime")
    raise ConfigError(
        "expected a torch nn.Module, an ONNX file path or an onnxruntime.InferenceSession, "
        f"got {type(model_or_onnx).__name__}"
    )


def predict_logits(
    model_or_onnx: Any,
    data: Any,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Outputs (N, ...) float32 on CPU for every sample of `data`, in order (see `predict`).

    `model_or_onnx`: an nn.Module (run in eval mode under no_grad on `device`, default the
    model's own device; its train/eval mode, device and torch's thread count are restored
    afterwards), an ONNX file path or an onnxruntime.InferenceSession (`device` is ignored,
    `threads` applies to sessions made from a path).
    """
    return predict(model_or_onnx, data, batch_size=batch_size, device=device, threads=threads)[0]


def evaluate(
    model_or_onnx: Any,
    data: Any,
    *,
    reference: Any | None = None,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    topk: Sequence[int] = (1, 5),
    threads: int | None = None,
    neighbours: int = 10,
) -> dict[str, Any]:
    """Score a model (PyTorch or ONNX) on `data` (any data `as_source` takes).

    Labelled data with (N, C) outputs: `classification_metrics(...)` plus `loss` (mean cross
    entropy, computed the same way for both backends). With `reference` (another model or ONNX
    file, e.g. the uncompressed teacher): how closely the outputs follow the reference's on the
    same samples, under `reference`: for (N, D) embeddings (a sentence encoder, unlabelled
    text) mean / min cosine and top-`neighbours` neighbour overlap (`compare_embeddings`); for
    labelled classification also the top-1 agreement with the reference's predictions.
    A decoder (an hf: "causal-lm" model, or its ONNX export: next-token logits (B, T, V)) on
    token batches gets `decoder_metrics` instead: held-out `perplexity` (and `loss`), and with
    `reference` the teacher's `token_agreement` and `token_kl` (batches of at most 32, scored one
    at a time).
    Always: `runtime` ("torch" or "onnxruntime") and `n`.
    """
    if is_decoder(model_or_onnx):
        return decoder_metrics(model_or_onnx, data, reference=reference, batch_size=min(batch_size, 32),
                               device=device, threads=threads)

    outputs, targets, runtime = predict(model_or_onnx, data, batch_size=batch_size, device=device, threads=threads)
    out: dict[str, Any] = {}
    if is_encoder(model_or_onnx):
        targets = None  # an encoder's (N, D) embeddings are not class scores, labelled data or not
    if targets is not None and outputs.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
        targets = targets.detach().cpu().long()
        c = outputs.shape[1]
        if len(outputs) != len(targets):
            raise ConfigError(f"evaluate: model returned outputs of shape {tuple(outputs.shape)} for {len(targets)} samples")
        if int(targets.max()) >= c:
            raise ConfigError(f"evaluate: targets contain class {int(targets.max())} but the model outputs {c} logits")
        out = classification_metrics(outputs, targets, topk=topk)
        out["loss"] = float(F.cross_entropy(outputs.double(), targets).item())
    elif reference is None:
        if targets is None:
            raise ConfigError("evaluation needs labelled data (this dataset has no targets), or a `reference` model "
                              "to compare the outputs with (e.g. the uncompressed teacher of a sentence encoder)")
        raise ConfigError(f"evaluate: the model's outputs have shape {tuple(outputs.shape)} and the targets "
                          f"{tuple(targets.shape)}; classification metrics need (N, C) logits and (N,) class ids")
    if reference is not None:
        ref, _, ref_runtime = predict(reference, data, batch_size=batch_size, device=device, threads=threads)
        out["reference"] = _reference_metrics(outputs, ref, neighbours)
        out["reference"]["runtime"] = ref_runtime
    out.setdefault("n", int(len(outputs)))
    out["runtime"] = runtime
    return out


def _reference_metrics(outputs: torch.Tensor, ref: torch.Tensor, neighbours: int) -> dict[str, Any]:
    if outputs.shape != ref.shape:
        raise ConfigError(f"evaluate: outputs {tuple(outputs.shape)} and the reference's {tuple(ref.shape)} differ in shape")
    flat, ref_flat = outputs.reshape(len(outputs), -1), ref.reshape(len(ref), -1)
    k = min(neighbours, len(outputs) - 1)
    res: dict[str, Any] = compare_embeddings(flat, ref_flat, k=k) if k >= 1 else {}
    if outputs.dim() == 2:
        res["top1_agreement"] = float((outputs.argmax(1) == ref.argmax(1)).float().mean())
    res["max_abs_diff"] = float((outputs - ref).abs().max())
    return res
