"""Masked / denoising autoencoding: reconstruct the pixels that were hidden from the encoder.

K. He, X. Chen, S. Xie, Y. Li, P. Dollar, R. Girshick, "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, arXiv:2111.06377; and P. Vincent et al., "Extracting and Composing Robust
Features with Denoising Autoencoders", ICML 2008.

The image is cut into `patch x patch` squares, a fraction of them is masked (set to each image's
background value, and optionally the rest gets noise), the encoder embeds the corrupted image
and a small decoder (`condense.ssl.heads.PixelDecoder`) predicts every pixel. As in MAE, the loss
is the mean squared error over the *masked* pixels only:

    L = sum_{b,c,h,w} m_{b,h,w} (x_hat - x)^2 / (C * sum_{b,h,w} m_{b,h,w})

where `m` is 1 on masked pixels. A CNN encoder sees the masked image with the holes filled (it
cannot drop tokens as a ViT does), which makes this the denoising-autoencoder flavour of MAE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError


def random_patch_mask(
    batch: int, height: int, width: int, *, patch: int = 2, ratio: float = 0.5,
    device: torch.device | str | None = None, generator: torch.Generator | None = None,
) -> Tensor:
    """A `(batch, 1, height, width)` float mask, 1 on masked pixels: exactly
    `round(ratio * n_patches)` of the `ceil(h / patch) * ceil(w / patch)` patches per image."""
    if patch < 1:
        raise ConfigError(f"mask: patch must be >= 1, got {patch}")
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"mask: ratio must be in (0, 1), got {ratio}")
    gh, gw = -(-height // patch), -(-width // patch)
    n = gh * gw
    k = min(max(int(round(ratio * n)), 1), n - 1) if n > 1 else 1
    scores = torch.rand(batch, n, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    grid = (ranks < k).float().reshape(batch, 1, gh, gw)
    mask = grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)[:, :, :height, :width]
    return mask.to(device) if device is not None else mask


def masked_reconstruction_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error of `prediction` vs `target` `(B, C, H, W)` over pixels where `mask` is 1.

    `mask` is `(B, 1, H, W)` or `(B, C, H, W)` (1 = masked, scored; 0 = visible, ignored).
    """
    if prediction.shape != target.shape:
        raise ConfigError(f"mae: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    m = mask.to(prediction.dtype).float().expand_as(target)
    denom = m.sum()
    if float(denom) <= 0:
        raise ConfigError("mae: the mask hides no pixel; nothing to reconstruct")
    err = F.mse_loss(prediction.float(), target.detach().float(), reduction="none")
    return (err * m).sum() / denom


class MaskedReconstructionLoss(nn.Module):
    """`masked_reconstruction_loss` as a module."""

    def forward(self, prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return masked_reconstruction_loss(prediction, target, mask)
