"""BYOL's regression loss: the online prediction matches the EMA target's projection.

J.-B. Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020, arXiv:2006.07733 (eq. 2).

With `q` the online network's prediction and `z'` the target network's projection of the other
view, both L2-normalised, the loss is their squared distance

    L = || q/||q|| - z'/||z'|| ||^2 = 2 - 2 * <q, z'> / (||q|| ||z'||)

averaged over the batch. The target gets no gradient (it is detached here) and moves as an
exponential moving average of the online network (`condense.ssl.callbacks.EMATarget`). The
paper symmetrises by swapping the views and adding both terms; the task does that.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of `2 - 2 cos(prediction, target)`; `target` is detached. Both `(N, D)`."""
    if prediction.shape != target.shape:
        raise ConfigError(f"byol: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


class BYOLLoss(nn.Module):
    """`byol_loss` as a module."""

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return byol_loss(prediction, target)
