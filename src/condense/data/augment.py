"""Batch augmentations on tensors (kornia), applied on whatever device the batch lives on.

Randomness comes only from torch's global RNG (kornia samples its parameters with torch), so
saving and restoring `torch.get_rng_state()` (and the CUDA states) reproduces an epoch exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError


@dataclasses.dataclass
class AugmentConfig(Config):
    """Training-time augmentations; every field at 0 means off.

    shift: random translation by up to this many pixels (zero-pad, then random crop back).
    hflip: probability of a horizontal flip.
    noise: std of additive gaussian noise (in the units of the standardized inputs).
    """

    shift: int = 0
    hflip: float = 0.0
    noise: float = 0.0

    def validate(self) -> None:
        if self.shift < 0:
            raise ConfigError(f"AugmentConfig.shift must be >= 0 pixels, got {self.shift}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ConfigError(f"AugmentConfig.hflip is a probability in [0, 1], got {self.hflip}")
        if self.noise < 0:
            raise ConfigError(f"AugmentConfig.noise is a std and must be >= 0, got {self.noise}")

    @property
    def enabled(self) -> bool:
        return self.shift > 0 or self.hflip > 0 or self.noise > 0


class _PadCrop(nn.Module):
    """Random translation: pad by `shift` and crop back to the input size (kornia RandomCrop)."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift
        self._crops: dict[tuple[int, int], nn.Module] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import kornia.augmentation as K

        size = (int(x.shape[-2]), int(x.shape[-1]))
        crop = self._crops.get(size)
        if crop is None:
            crop = K.RandomCrop(size, padding=self.shift, fill=0.0, padding_mode="constant")
            self._crops[size] = crop
        return crop(x)

    def extra_repr(self) -> str:
        return f"shift={self.shift}"


class Augment(nn.Module):
    """Applies the configured kornia augmentations to a batch (B, C, H, W); (B, F) gets noise only."""

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.cfg = cfg
        spatial: list[nn.Module] = []
        if cfg.shift > 0:
            spatial.append(_PadCrop(cfg.shift))
        if cfg.hflip > 0:
            spatial.append(K.RandomHorizontalFlip(p=cfg.hflip))
        self.spatial = nn.Sequential(*spatial)
        self.noise = K.RandomGaussianNoise(mean=0.0, std=cfg.noise, p=1.0) if cfg.noise > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            out = self.spatial(x) if len(self.spatial) else x
            return self.noise(out) if self.noise is not None else out
        if len(self.spatial):
            raise ConfigError(
                f"augment: shift and hflip need image batches (B, C, H, W), got shape {tuple(x.shape)}"
            )
        if self.noise is None:
            return x
        # kornia works on image batches: view (B, ...) as (B, 1, 1, F) and back
        return self.noise(x.reshape(len(x), 1, 1, -1)).reshape(x.shape)


def build_augment(cfg: AugmentConfig | dict[str, Any] | None) -> nn.Module | None:
    """The augmentation module for `cfg`, or None when every augmentation is off."""
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        cfg = AugmentConfig.from_dict(cfg)
    if not isinstance(cfg, AugmentConfig):
        raise ConfigError(f"augment: expected an AugmentConfig or a mapping, got {type(cfg).__name__}")
    return Augment(cfg) if cfg.enabled else None
