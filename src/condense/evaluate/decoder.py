"""Decoder metrics on next-token logits (B, T, V): held-out perplexity, and against a reference
(the teacher) top-1 token agreement and per-token KL(teacher || student).

Positions follow the attention mask of each batch (padding on either side is ignored):

- `perplexity` = exp(mean cross-entropy of the logits at position t against the token at t + 1),
  over the pairs where both t and t + 1 are real (mask 1); `loss` is that mean cross-entropy.
- `token_agreement`: share of real positions (mask 1) where the model's arg-max token equals the
  reference's; `token_kl`: mean over real positions of KL(softmax(reference) || softmax(model))
  in nats. Every real position counts here, the last one too (its prediction of the next token
  is still a distribution to compare).

Batches are run and scored one at a time (nothing of size N x T x V is kept); sums are float64.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError
from condense.data.loader import as_source
from condense.export.onnx import model_device, onnx_session, ort_run, output_tensor
from condense.models.signature import batch_to, call_model, model_inputs


def is_decoder(model_or_onnx: Any) -> bool:
    """An hf: causal-LM (task "causal-lm"), or an ONNX file / session whose first output is
    named "logits" with three dimensions and which reads `input_ids` (condense's export of one)."""
    if isinstance(model_or_onnx, nn.Module):
        return getattr(model_or_onnx, "task", None) == "causal-lm"
    try:
        sess = onnx_session(model_or_onnx) if isinstance(model_or_onnx, (str, os.PathLike)) else model_or_onnx
        out = sess.get_outputs()[0]
        names = {i.name for i in sess.get_inputs()}
    except Exception:  # noqa: BLE001  (not an ONNX model: not a decoder)
        return False
    return out.name == "logits" and len(out.shape) == 3 and "input_ids" in names


class _Runner:
    """Calls one model (torch or ONNX) on a batch; a torch model is put in eval mode on `device`
    with `threads`, all restored on exit."""

    def __init__(self, model_or_onnx: Any, device: Any, threads: int | None) -> None:
        self.obj, self.device, self.threads = model_or_onnx, device, threads
        self.runtime = "torch" if isinstance(model_or_onnx, nn.Module) else "onnxruntime"

    @contextlib.contextmanager
    def ready(self) -> Iterator[_Runner]:
        if not isinstance(self.obj, nn.Module):
            self.session = (onnx_session(self.obj, threads=self.threads)
                            if isinstance(self.obj, (str, os.PathLike)) else self.obj)
            yield self
            return
        model = self.obj
        was_training, home, old_threads = model.training, model_device(model), torch.get_num_threads()
        self.dev = torch.device(self.device) if self.device is not None else home
        try:
            if self.threads is not None:
                torch.set_num_threads(int(self.threads))
            if self.dev != home:
                model.to(self.dev)
            model.eval()
            with torch.no_grad():
                yield self
        finally:
            model.train(was_training)
            if self.dev != home:
                model.to(home)
            torch.set_num_threads(old_threads)

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        if isinstance(self.obj, nn.Module):
            out = output_tensor(call_model(self.obj, batch_to(model_inputs(self.obj, batch), self.dev)))
            return out.detach().cpu()
        return torch.from_numpy(np.asarray(ort_run(self.session, batch), dtype=np.float32))


def token_sums(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               ref_logits: torch.Tensor | None = None) -> dict[str, float]:
    """The additive pieces of the decoder metrics for one batch (float64): `nll` and `pairs`
    (perplexity), and with `ref_logits` `agree`, `kl` and `positions`."""
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ConfigError(f"decoder metrics need next-token logits (B, T, V) for input_ids {tuple(input_ids.shape)}, "
                          f"got {tuple(logits.shape)}")
    mask = attention_mask.to(logits.device).bool()
    ids = input_ids.to(logits.device).long()
    lp = F.log_softmax(logits.double(), dim=-1)
    pair = mask[:, :-1] & mask[:, 1:]
    nll = -lp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = {"nll": float(nll[pair].sum()), "pairs": float(pair.sum())}
    if ref_logits is not None:
        if ref_logits.shape != logits.shape:
            raise ConfigError(f"decoder metrics: logits {tuple(logits.shape)} and the reference's "
                              f"{tuple(ref_logits.shape)} differ in shape")
        ref_lp = F.log_softmax(ref_logits.to(logits.device).double(), dim=-1)
        kl = (ref_lp.exp() * (ref_lp - lp)).sum(-1)
        out["agree"] = float((logits.argmax(-1) == ref_logits.to(logits.device).argmax(-1))[mask].sum())
        out["kl"] = float(kl[mask].sum())
        out["positions"] = float(mask.sum())
    return out


def decoder_metrics(model_or_onnx: Any, data: Any, *, reference: Any | None = None, batch_size: int = 32,
                    device: str | torch.device | None = None, threads: int | None = None) -> dict[str, Any]:
    """`perplexity`, `loss` (mean next-token cross-entropy), `tokens` (scored pairs), `n`,
    `runtime`; with `reference`: `token_agreement`, `token_kl` and `positions` at the top level and
    again under `reference` (with its runtime). Batches must carry `input_ids` and `attention_mask`."""
    source = as_source(data)
    if len(source) == 0:
        raise ConfigError("no samples to run the model on")
    run = _Runner(model_or_onnx, device, threads)
    ref = _Runner(reference, device, threads) if reference is not None else None
    tot: dict[str, float] = {}
    n = 0
    with run.ready(), (ref.ready() if ref is not None else contextlib.nullcontext()):
        for batch in source.batches(batch_size):
            if "input_ids" not in batch or "attention_mask" not in batch:
                raise ConfigError(f"decoder metrics need token batches (input_ids, attention_mask), got {sorted(batch)}")
            logits = run(batch)
            ref_logits = ref(batch) if ref is not None else None
            for k, v in token_sums(logits, batch["input_ids"], batch["attention_mask"], ref_logits).items():
                tot[k] = tot.get(k, 0.0) + v
            n += int(batch["input_ids"].shape[0])
    if tot["pairs"] == 0:
        raise ConfigError("decoder metrics: no position has a real next token (every text is shorter than 2 tokens)")
    loss = tot["nll"] / tot["pairs"]
    out: dict[str, Any] = {"perplexity": math.exp(loss), "loss": loss, "tokens": int(tot["pairs"]), "n": n,
                           "runtime": run.runtime}
    if ref is not None:
        agreement, kl = tot["agree"] / tot["positions"], tot["kl"] / tot["positions"]
        out.update(token_agreement=agreement, token_kl=kl, positions=int(tot["positions"]))
        out["reference"] = {"token_agreement": agreement, "token_kl": kl, "runtime": ref.runtime}
    return out
