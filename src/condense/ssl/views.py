"""Multi-view augmentations for self-supervised learning on small images (kornia).

Two independent draws of `Views` give the two "views" of SimCLR / BYOL. The defaults suit 8x8
digits: no horizontal flip (it changes what a digit means), at most ~1 pixel of translation, a
small rotation / scale (zoom + shift already act as a mild crop; a random-resized crop is
available but off by default: it costs more than the rest together), random erasing of a small
patch and gaussian noise. (On digits these defaults lifted SimCLR's kNN accuracy from 0.83 with
milder views to 0.90; stronger ones, or a 0.6 random-resized crop, were worse.) Inputs are standardized, so a "0" fill would paint the mean grey into
the image; instead every spatial transform fills with each image's own background (its minimum
value): the batch is shifted so the background is 0, transformed with zero fill, shifted back.

Randomness comes from torch's global RNG only (kornia samples with torch), so `fit()`'s resume
reproduces the views exactly.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError


@dataclasses.dataclass
class ViewConfig(Config):
    """One random view of a batch; 0 (or 1.0 for `crop`) switches a transform off.

    degrees: rotation drawn from [-degrees, degrees].
    translate: shift as a fraction of the side (0.125 = 1 pixel on 8x8).
    scale: zoom factor drawn from [1 - scale, 1 + scale].
    crop: random-resized crop keeping an area fraction in [crop, 1] (1.0 = off).
    erase: probability of erasing one small rectangle (2-15 % of the area) to background.
    noise: std of additive gaussian noise (standardized units).
    """

    degrees: float = 15.0
    translate: float = 0.125
    scale: float = 0.2
    crop: float = 1.0
    erase: float = 0.5
    noise: float = 0.2

    def validate(self) -> None:
        if not 0.0 <= self.degrees <= 180.0:
            raise ConfigError(f"ViewConfig.degrees must be in [0, 180], got {self.degrees}")
        if not 0.0 <= self.translate < 0.5:
            raise ConfigError(f"ViewConfig.translate is a fraction of the side in [0, 0.5), got {self.translate}")
        if not 0.0 <= self.scale < 1.0:
            raise ConfigError(f"ViewConfig.scale must be in [0, 1), got {self.scale}")
        if not 0.0 < self.crop <= 1.0:
            raise ConfigError(f"ViewConfig.crop is a minimum area fraction in (0, 1], got {self.crop}")
        if not 0.0 <= self.erase <= 1.0:
            raise ConfigError(f"ViewConfig.erase is a probability in [0, 1], got {self.erase}")
        if self.noise < 0:
            raise ConfigError(f"ViewConfig.noise is a std and must be >= 0, got {self.noise}")

    @property
    def enabled(self) -> bool:
        return bool(self.degrees or self.translate or self.scale or self.crop < 1.0 or self.erase or self.noise)


class Views(nn.Module):
    """Draw one random view of an image batch `(B, C, H, W)`; `(B, F)` vectors get noise only.

    The spatial pipeline is built per image size on first use (crop sizes depend on it).
    """

    def __init__(self, cfg: ViewConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ViewConfig()
        self._spatial: dict[tuple[int, int], nn.Module] = {}

    def _pipeline(self, size: tuple[int, int]) -> nn.Module:
        import kornia.augmentation as K

        if size in self._spatial:
            return self._spatial[size]
        c = self.cfg
        ops: list[nn.Module] = []
        if c.crop < 1.0:
            ops.append(K.RandomResizedCrop(size, scale=(c.crop, 1.0), ratio=(0.8, 1.25), p=1.0, cropping_mode="resample"))
        if c.degrees or c.translate or c.scale:
            ops.append(K.RandomAffine(
                degrees=c.degrees,
                translate=(c.translate, c.translate) if c.translate else None,
                scale=(1.0 - c.scale, 1.0 + c.scale) if c.scale else None,
                padding_mode="zeros", p=1.0,
            ))
        if c.erase:
            ops.append(K.RandomErasing(scale=(0.02, 0.15), ratio=(0.5, 2.0), value=0.0, p=c.erase))
        pipe = nn.Sequential(*ops)
        self._spatial[size] = pipe
        return pipe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            pipe = self._pipeline((int(x.shape[-2]), int(x.shape[-1])))
            if len(pipe):
                background = x.amin(dim=(1, 2, 3), keepdim=True)
                x = pipe(x - background) + background
        elif x.dim() != 2:
            raise ConfigError(f"views: expected an image batch (B, C, H, W) or vectors (B, F), got shape {tuple(x.shape)}")
        if self.cfg.noise:
            x = x + self.cfg.noise * torch.randn_like(x)
        return x

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cfg.to_dict().items())


def build_views(cfg: ViewConfig | dict | None) -> Views | None:
    """The view module for `cfg`, or None when every transform is off (views = the input)."""
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        cfg = ViewConfig.from_dict(cfg)
    if not isinstance(cfg, ViewConfig):
        raise ConfigError(f"views: expected a ViewConfig or a mapping, got {type(cfg).__name__}")
    return Views(cfg) if cfg.enabled else None
