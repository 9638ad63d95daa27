"""The one parameter and MAC counter: `condense.evaluate.profile` (per-sample FLOPs / MACs of a
model) and `condense.prune.report` (MACs of a pruned model on the example batch) both call it.

MACs are torch.utils.flop_counter's FLOPs of one eval-mode forward / 2: a multiply-add of a matmul,
linear, conv or attention counts 1; element-wise ops (activations, normalisation, bias, pooling)
count 0. torch's fused eval-mode Transformer fast path is off while counting (its kernels have no
flop formula: an `nn.TransformerEncoder` would count only its head).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from condense.core.taps import flop_counter
from condense.models.signature import call_model


def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one eval-mode forward on `inputs` as given (a tensor, a tuple of
    positional tensors, or a batch dict of named inputs); the model's modes are restored after."""
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), flop_counter() as counter:
            if isinstance(inputs, (Mapping, torch.Tensor)):
                call_model(model, inputs)
            else:
                model(*inputs)
    finally:
        for m, mode in was.items():
            m.training = mode
    return int(counter.get_total_flops()) // 2


def count_parameters(model: nn.Module) -> dict[str, int]:
    """`params`: elements of all (deduplicated) parameters; `nonzero_params`: those not exactly 0.

    Buffers (BatchNorm running statistics, pruning masks, ...) are not counted.
    """
    params = 0
    nonzero = 0
    for p in model.parameters():
        params += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return {"params": int(params), "nonzero_params": int(nonzero)}
