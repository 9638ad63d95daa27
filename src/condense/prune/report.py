"""Honest numbers for a pruned model: what it really saves, and in words what it does not.

A masked (or otherwise zero-filled) model is dense: its parameter count, bytes on disk, MACs and
latency are those of the unpruned model, and the report says so. A compressed size is only an
*estimate* of a sparse encoding (CSR or bitmask) that nothing here writes, and is labelled so.
Channel pruning changes the dense shapes, so its savings show up in every number.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from condense.evaluate.counts import count_macs  # noqa: F401  (the one counter; re-exported here)
from condense.evaluate.profile import measure_latency as time_calls
from condense.prune.masks import maskable_kinds, masked_layers, sparsity_report

ZEROS_NOTE = "zeros are not removed: dense size and latency are unchanged"


def _inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def count_params(model: nn.Module) -> int:
    """Parameters the deployed model holds (a masked layer counts its dense weight once)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith(".original")) + sum(
        m.weight.numel() for m in masked_layers(model).values()
    )


def saved_bytes(model: nn.Module) -> int:
    """Bytes of the state dict serialised as safetensors (what `save` writes, masks included)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return len(save(state))


def median_latency_ms(model: nn.Module, example_inputs: Any, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of an eval-mode forward in PyTorch eager, after warm-up."""
    inputs = _inputs(example_inputs)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(time_calls(lambda: model(*inputs), warmup=warmup, repeats=repeats)["p50_ms"])
    finally:
        model.train(was)


def compressed_estimates(model: nn.Module) -> dict[str, int]:
    """Estimated bytes of the Linear/Conv weights stored sparse (fp32 values), other tensors dense."""
    csr = bitmask = dense = 0
    kinds = maskable_kinds()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, kinds):
                w = m.weight
                nnz, rows = int((w != 0).sum()), w.shape[0]
                dense += w.numel() * w.element_size()
                csr += nnz * (w.element_size() + 4) + (rows + 1) * 4
                bitmask += nnz * w.element_size() + math.ceil(w.numel() / 8)
    # everything except the maskable layers' weights (and their masks), which are counted above
    counted = tuple(f"{n}.{suffix}" for n, m in model.named_modules() if isinstance(m, kinds)
                    for suffix in ("weight", "parametrizations.weight."))
    other = sum(t.numel() * t.element_size() for k, t in model.state_dict().items()
                if not (k.startswith(counted) and (k.endswith("weight") or k.endswith((".original", ".mask")))))
    return {"weights_dense": dense, "csr_estimate": csr + other, "bitmask_estimate": bitmask + other}


def pruning_report(
    model: nn.Module,
    example_inputs: Any = None,
    reference: nn.Module | None = None,
    measure_latency: bool = False,
) -> dict[str, Any]:
    """Params, bytes on disk, MACs (and latency) of `model`, vs `reference` when given, with notes."""

    def numbers(m: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {"params": count_params(m), "bytes_on_disk": saved_bytes(m)}
        if example_inputs is not None:
            out["macs"] = count_macs(m, example_inputs)
            if measure_latency:
                out["latency_ms"] = median_latency_ms(m, example_inputs)
        return out

    sp = sparsity_report(model)
    masked = list(masked_layers(model))
    report: dict[str, Any] = {"model": numbers(model), "sparsity": sp["global"]["sparsity"], "masked_layers": masked}
    notes: list[str] = []
    if masked or sp["global"]["sparsity"] > 0.01:
        notes.append(ZEROS_NOTE)
        est = compressed_estimates(model)
        report["compressed_size_estimate"] = {
            **est, "how": "estimate only, not written: fp32 non-zeros + int32 column indices (CSR) or a 1-bit mask",
        }
    if masked:
        notes.append(
            f"{len(masked)} layers still carry masks (parametrizations): the saved file holds weights and masks; "
            "call make_permanent() before export"
        )
    odd = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv1d)) and m.out_channels % 8]
    if odd:
        notes.append(f"channel counts not multiples of 8 may defeat vectorized kernels: {', '.join(odd[:5])}" + (" ..." if len(odd) > 5 else ""))
    if reference is not None:
        ref = numbers(reference)
        report["reference"] = ref
        report["ratio"] = {k: report["model"][k] / ref[k] for k in ref if ref[k]}
    report["notes"] = notes
    return report
