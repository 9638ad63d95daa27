"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR.

T. Chen, S. Kornblith, M. Norouzi, G. Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020, arXiv:2002.05709 (eq. 1).

For a batch of N pairs, the 2N projections are L2-normalised, `u_i = z_i / ||z_i||`, and with
`s_ij = u_i . u_j / tau` each sample's positive is its other view `p(i)`:

    l_i = -log( exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik) )
    L   = (1 / 2N) * sum_i l_i

i.e. a (2N - 1)-way classification of the positive among every other sample of the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """NT-Xent of paired projections `z1[i] <-> z2[i]`, both `(N, D)` with N >= 2; a scalar."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ConfigError(f"nt_xent: expected two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise ConfigError("nt_xent: needs at least 2 pairs per batch (the other pairs are the negatives)")
    if temperature <= 0:
        raise ConfigError(f"nt_xent: temperature must be > 0, got {temperature}")
    u = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = u @ u.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(u.device)
    return F.cross_entropy(sim, positive)


class NTXentLoss(nn.Module):
    """`nt_xent_loss` with a fixed temperature."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"NTXentLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent_loss(z1, z2, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
