"""GPTQ: error-compensating weight quantization from second-order statistics of the inputs.

Frantar, Ashkboos, Hoefler & Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (arXiv:2210.17323), building on Optimal Brain Quantization
(Frantar & Alistarh 2022). For a Linear layer with weight W (out x in) and calibration inputs X,
minimise ||W X^T - Q X^T||^2 column by column: with H = 2 X^T X (damped by `percdamp` times
mean(diag H)) and U the upper Cholesky factor of H^-1, quantize column j, and spread its error
`(w_j - q_j) / U_jj` over the not-yet-quantized columns via row j of U. Updates are applied
lazily in blocks of `block_size` columns (one rank-`block_size` matmul per block instead of a
rank-1 update per column). Group-wise scales are chosen when the loop reaches the first column
of each group, from the error-updated weights (as in the reference implementation).

`sequential=True` quantizes layers one after another, collecting each layer's H on inputs that
already pass through the quantized earlier layers, so later layers compensate earlier errors.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from condense.core.errors import RunError
from condense.data.calibration import calibration_list, run_batch
from condense.quantize.modules.weight_only import (
    ALGORITHMS,
    SCALE_DTYPES,
    QuantizedLinear,
    QuantizedWeight,
    group_count,
    group_qparams,
    quantize_to_int,
)

if TYPE_CHECKING:
    from condense.quantize.modules.weight_only import WeightOnlyConfig

__all__ = ["HessianCollector", "calibration_batches", "gptq_quantize", "gptq_quantize_model", "run_batch"]


# --------------------------------------------------------------------------------------------
# Calibration plumbing
# --------------------------------------------------------------------------------------------


def calibration_batches(calibration: Any, limit: int | None = None) -> list[Any]:
    """Materialise a calibration set (see `condense.quantize.calibration`), at most `limit` batches."""
    return calibration_list(calibration, max_batches=limit)



class HessianCollector:
    """Forward hook accumulating H = 2/n * sum x x^T over all rows of a Linear layer's inputs."""

    def __init__(self, module: nn.Linear) -> None:
        self.H = torch.zeros(module.in_features, module.in_features, dtype=torch.float32,
                             device=module.weight.device)
        self.n = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, _m: nn.Module, inputs: tuple[Any, ...], _out: Any) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
        m = x.shape[0]
        if m == 0:
            return
        self.H *= self.n / (self.n + m)
        self.n += m
        x = math.sqrt(2.0 / self.n) * x
        self.H += x.t() @ x

    def remove(self) -> None:
        self._handle.remove()


# --------------------------------------------------------------------------------------------
# The algorithm
# --------------------------------------------------------------------------------------------


def _inverse_cholesky(H: Tensor, percdamp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, raising the damping if H is ill-conditioned."""
    n = H.shape[0]
    mean_diag = torch.diag(H).mean().clamp_min(1e-8)
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    damp = percdamp
    for _ in range(6):
        try:
            L = torch.linalg.cholesky(H + damp * mean_diag * eye)
            Hinv = torch.cholesky_inverse(L)
            return torch.linalg.cholesky(Hinv, upper=True)
        except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
            damp *= 10.0
    raise RunError("GPTQ: the input Hessian is not positive definite even with heavy damping")


@torch.no_grad()
def gptq_quantize(
    weight: Tensor,
    H: Tensor,
    bits: int,
    group_size: int = 128,
    symmetric: bool = True,
    *,
    percdamp: float = 0.01,
    block_size: int = 128,
    clip_search: bool = True,
    scale_dtype: torch.dtype = torch.float16,
) -> QuantizedWeight:
    """GPTQ-quantize one weight `(out, in)` given the input Hessian `H` `(in, in)`."""
    W = weight.detach().clone().float()
    rows, cols = W.shape
    H = H.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    Hinv = _inverse_cholesky(H, percdamp)
    gs = cols if group_size <= 0 else group_size
    ng = group_count(cols, group_size)
    Q = torch.zeros(rows, cols, dtype=torch.int16, device=W.device)
    scales = torch.zeros(rows, ng, dtype=torch.float32, device=W.device)
    zeros = torch.zeros(rows, ng, dtype=torch.float32, device=W.device)
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:
                cur = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :gs]
                scale, zero = group_qparams(
                    cur, bits, symmetric, clip_search=clip_search, scale_dtype=scale_dtype
                )
                scales[:, col // gs] = scale[:, 0]
                zeros[:, col // gs] = zero[:, 0]
            w = W1[:, i : i + 1]
            q = quantize_to_int(w, scale, zero, bits, symmetric)
            Q[:, col] = q[:, 0]
            dq = (q.float() - zero) * scale
            err = (w - dq) / Hinv1[i, i]
            W1[:, i:] -= err @ Hinv1[i : i + 1, i:]
            Err1[:, i : i + 1] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return QuantizedWeight(
        Q,
        scales.to(scale_dtype),
        None if symmetric else zeros.to(torch.int16),
        bits,
        group_size,
        symmetric,
    )


def gptq_quantize_model(
    model: nn.Module, layer_bits: dict[str, int], config: WeightOnlyConfig, calibration: Any
) -> nn.Module:
    """GPTQ every layer in `layer_bits` (names of nn.Linear in `model`), swapping in place."""
    batches = calibration_batches(calibration, config.max_calibration_batches)
    scale_dtype = SCALE_DTYPES[config.scale_dtype]
    was_training = model.training
    model.eval()
    names = list(layer_bits)

    def collect(targets: Iterable[str]) -> dict[str, HessianCollector]:
        cols = {n: HessianCollector(model.get_submodule(n)) for n in targets}
        try:
            with torch.no_grad():
                for b in batches:
                    run_batch(model, b)
        finally:
            for c in cols.values():
                c.remove()
        return cols

    groups = [[n] for n in names] if config.sequential else [names]
    for group in groups:
        stats = collect(group)
        for name in group:
            lin = model.get_submodule(name)
            if stats[name].n == 0:
                raise RunError(f"GPTQ: layer {name!r} saw no inputs during calibration (unused?)")
            qw = gptq_quantize(
                lin.weight, stats[name].H, layer_bits[name], config.group_size, config.symmetric,
                percdamp=config.percdamp, block_size=config.block_size,
                clip_search=config.clip_search, scale_dtype=scale_dtype,
            )
            model.set_submodule(name, QuantizedLinear.from_quantized(lin, qw))
        del stats
    model.train(was_training)
    return model


ALGORITHMS["gptq"] = gptq_quantize_model
