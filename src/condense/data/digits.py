"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; nothing downloaded)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from condense.core.errors import ConfigError
from condense.data.base import Splits, make_splits


def resize_images(x: np.ndarray, image_size: int | None, channels: int, where: str) -> np.ndarray:
    """Bilinear-resize (N, C, H, W) images to `image_size` square and replicate 1 -> `channels`."""
    if channels not in (1, 3):
        raise ConfigError(f"{where}: channels must be 1 or 3, got {channels!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ConfigError(f"{where}: image_size must be a positive integer, got {image_size!r}")
    t = torch.as_tensor(x, dtype=torch.float32)
    if image_size is not None and tuple(t.shape[-2:]) != (image_size, image_size):
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if channels != t.shape[1]:
        if t.shape[1] != 1:
            raise ConfigError(f"{where}: cannot turn {t.shape[1]}-channel images into {channels}")
        t = t.expand(-1, channels, -1, -1)
    return t.contiguous().numpy()


def load_digits(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    image_size: int = 8,
    channels: int = 1,
) -> Splits:
    """8x8 handwritten digits bundled with scikit-learn (1797 images, 10 classes)."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    x = resize_images(x, image_size, channels, "digits")
    y = bunch.target.astype(np.int64)
    return make_splits(
        "digits",
        x,
        y,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        labelled_fraction=labelled_fraction,
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        info={"source": "sklearn.datasets.load_digits", "image_size": int(x.shape[-1])},
    )
