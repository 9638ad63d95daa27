"""The linear algebra of low-rank factorization: (whitened) truncated SVD and the weight views.

Every form reduces to one matrix problem: a weight viewed as a matrix `W` (out x in) acting on
input vectors `z` (features of a Linear, unfolded patches of a conv). With the input covariance
`C = E[z z^T] = S S^T` (S lower-triangular Cholesky factor), the output error of a rank-r
replacement `W' = B A` is `E||(W - W') z||^2 = ||(W - W') S||_F^2`, which the truncated SVD of
`W S` minimises (Eckart-Young); `A = Vr^T S^-1` maps back to the raw input (SVD-LLM, Wang et al.
2024). Without data, `S = I`: plain truncated SVD of the weights (Denton et al. 2014).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from condense.core.errors import RunError
from condense.core.linear import linear_weight

Spectrum = tuple[Tensor, Tensor, Tensor]  # U, s, Vh (float64)


def whitener(cov: Tensor) -> Tensor:
    """Lower Cholesky factor of `cov + lambda I`, lambda grown from 1e-6 of the mean diagonal until
    it factorises (a dead input channel makes the covariance singular)."""
    cov = cov.double()
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    scale = float(cov.diagonal().mean().clamp_min(1e-12))
    for power in range(-6, 1):
        chol, info = torch.linalg.cholesky_ex(cov + (10.0**power) * scale * eye)
        if int(info) == 0:
            return chol
    raise RunError("activation-aware SVD: the input covariance could not be factorised even with 100 % damping")


def spectrum(matrix: Tensor, chol: Tensor | None = None) -> Spectrum:
    """SVD of `matrix @ chol` (or of `matrix`), in float64."""
    m = matrix.detach().double().cpu()
    if chol is not None:
        m = m @ chol
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return u, s, vh


def energy(s: Tensor) -> Tensor:
    """Cumulative fraction of squared singular values: `energy(s)[r - 1]` is what rank r keeps."""
    sq = s.double() ** 2
    total = sq.sum()
    return torch.cumsum(sq, 0) / total if float(total) > 0 else torch.ones_like(sq)


def factors(spec: Spectrum, rank: int, chol: Tensor | None = None, balance: bool = True) -> tuple[Tensor, Tensor]:
    """`(B, A)` with `B @ A` the best rank-`rank` approximation (in the whitened norm when `chol`):
    B is out x rank, A is rank x in. `balance` splits the singular values evenly between them."""
    u, s, vh = spec
    r = int(rank)
    left = s[:r].sqrt() if balance else s[:r]
    right = s[:r].sqrt() if balance else torch.ones_like(s[:r])
    b = u[:, :r] * left
    a = right[:, None] * vh[:r]
    if chol is not None:  # a = vh_r S^-1: solve X S = vh_r
        a = torch.linalg.solve_triangular(chol, a, upper=False, left=False)
    return b, a


# ----------------------------------------------------------------------------- weight views


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def conv_geometry(conv: nn.Conv2d) -> ConvGeometry | None:
    """The conv's geometry, or None when it cannot be factorised here (groups, string padding,
    non-zero padding modes)."""
    if conv.groups != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None
    return ConvGeometry(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))  # type: ignore[arg-type]


def matrix_view(module: nn.Module, form: str) -> Tensor:
    """The weight as the matrix the form truncates (out x in), matching `input_vectors`."""
    if form == "linear":  # (out, in); a transformers Conv1D stores (in, out)
        return linear_weight(module).detach()
    w = module.weight.detach()
    if form == "channel":  # (O, I*kh*kw), unfold order (channel, ky, kx)
        return w.reshape(w.shape[0], -1)
    if form == "spatial":  # (O*kw, I*kh): rows (o, x), columns (i, y)
        o, i, kh, kw = w.shape
        return w.permute(0, 3, 1, 2).reshape(o * kw, i * kh)
    if form == "tucker2":  # input mode: (O*kh*kw, I)
        o, i, kh, kw = w.shape
        return w.permute(0, 2, 3, 1).reshape(o * kh * kw, i)
    raise ValueError(form)


def input_vectors(module: nn.Module, form: str, x: Tensor) -> Tensor:
    """Rows of the input vectors `z` the form's matrix multiplies, from one forward input `x`."""
    if form == "linear":
        return x.reshape(-1, x.shape[-1])
    g = conv_geometry(module)  # type: ignore[arg-type]
    assert g is not None
    if form == "tucker2":
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if form == "channel":
        cols = torch.nn.functional.unfold(x, g.kernel, dilation=g.dilation, padding=g.padding, stride=g.stride)
    elif form == "spatial":
        cols = torch.nn.functional.unfold(x, (g.kernel[0], 1), dilation=(g.dilation[0], 1), padding=(g.padding[0], 0),
                                          stride=(g.stride[0], 1))
    else:
        raise ValueError(form)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])
