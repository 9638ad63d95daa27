"""Self-supervised losses: one file each, a pure function plus a thin `nn.Module` wrapper."""
from __future__ import annotations

from condense.ssl.losses.byol import BYOLLoss, byol_loss
from condense.ssl.losses.embed import EmbeddingLoss, embedding_loss
from condense.ssl.losses.mae import (
    MaskedReconstructionLoss,
    masked_reconstruction_loss,
    random_patch_mask,
)
from condense.ssl.losses.ntxent import NTXentLoss, nt_xent_loss
from condense.ssl.losses.seed import SEEDLoss, seed_loss

__all__ = [
    "BYOLLoss",
    "EmbeddingLoss",
    "MaskedReconstructionLoss",
    "NTXentLoss",
    "SEEDLoss",
    "byol_loss",
    "embedding_loss",
    "masked_reconstruction_loss",
    "nt_xent_loss",
    "random_patch_mask",
    "seed_loss",
]
