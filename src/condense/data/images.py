"""Reading one image file the way condense's image sources do, and `ImageFolderDataset`, the
lazy (one image decoded per item) dataset behind `load_imagefolder(lazy=True)`."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from condense.core.errors import ConfigError
from condense.data.lazy import SampleReadError, file_stamps, hash_parts

_TRUNCATED_LOCK = threading.Lock()


@contextmanager
def strict_truncation() -> Iterator[None]:
    """Make sure Pillow refuses truncated images while we load (restored afterwards)."""
    from PIL import ImageFile

    with _TRUNCATED_LOCK:
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old


def read_image(path: str | Path, size: tuple[int, int], mode: str) -> np.ndarray | str:
    """Decoded (C, H, W) uint8 array, or the reason the file cannot be used."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert(mode)
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def check_header(path: str) -> str | None:
    """None if Pillow recognises the file's header (format, size, mode), else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if min(im.size) < 1:
                return f"empty image size {im.size}"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


class ImageFolderDataset(Dataset):
    """Images read from disk one per item: `(image, label)`, a float (C, H, W) tensor and an int64
    scalar tensor (the image alone when unlabelled), like an eager split's `ArrayDataset`.

    Holds the root, the file names (one bytes array) and labels only. Each item is decoded with
    Pillow, converted to `mode`, resized (bilinear) to `size` = (H, W), scaled to [0, 1] and
    normalised by the per-channel `mean` / `std`. A file that cannot be decoded raises
    `SampleReadError` naming it. `labelled` and `fingerprint()` are read by condense's loader.
    """

    def __init__(
        self,
        root: str | Path,
        names: np.ndarray,
        targets: np.ndarray | None,
        *,
        size: tuple[int, int],
        mode: str,
        mean: Sequence[float],
        std: Sequence[float],
        stamps: np.ndarray | None = None,
        class_names: Sequence[str] = (),
        sample_ids: np.ndarray | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self.names = np.asarray(names, dtype=np.bytes_)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        if self.targets is not None and len(self.targets) != len(self.names):
            raise ConfigError(f"ImageFolderDataset: {len(self.names)} files but {len(self.targets)} labels")
        self.size, self.mode = (int(size[0]), int(size[1])), mode
        channels = 1 if mode == "L" else 3
        self.mean = np.asarray(mean, dtype=np.float32).reshape(channels, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(channels, 1, 1)
        self.stamps = file_stamps(self.root, self.names) if stamps is None else np.asarray(stamps, np.int64)
        self.class_names = list(class_names)
        # ids unique across the folder's splits (train + unlabelled may be concatenated)
        self.sample_ids = (np.arange(len(self.names), dtype=np.int64) if sample_ids is None
                           else np.asarray(sample_ids, dtype=np.int64))
        self._mean_t, self._std_t = torch.from_numpy(self.mean), torch.from_numpy(self.std)
        self._fingerprint: str | None = None

    uses_random = False  # decoding is deterministic: the loader need not seed each item

    @property
    def labelled(self) -> bool:
        return self.targets is not None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (len(self.mean), *self.size)

    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.names[i]))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        path = self.path(i)
        with strict_truncation():
            arr = read_image(path, self.size, self.mode)
        if isinstance(arr, str):
            raise SampleReadError(
                f"{path}: cannot decode this image ({arr}); fix or remove the file, or load the folder "
                "with verify='full' to skip unreadable images up front"
            )
        x = torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32) / 255.0))  # as the eager mode
        x = (x - self._mean_t) / self._std_t
        if self.targets is None:
            return x
        return x, torch.tensor(int(self.targets[i]), dtype=torch.int64)

    def subset(self, positions: Any) -> ImageFolderDataset:
        pos = np.asarray(positions, dtype=np.int64)
        return ImageFolderDataset(
            self.root, self.names[pos], None if self.targets is None else self.targets[pos], size=self.size,
            mode=self.mode, mean=self.mean.ravel(), std=self.std.ravel(), stamps=self.stamps[pos],
            class_names=self.class_names, sample_ids=self.sample_ids[pos],
        )

    def without_labels(self) -> ImageFolderDataset:
        out = self.subset(np.arange(len(self)))
        out.targets = None
        return out

    def fingerprint(self) -> str:
        """Hash of the file names, sizes, mtimes, labels and decode options (no pixel is read)."""
        if self._fingerprint is None:
            self._fingerprint = hash_parts(
                "ImageFolderDataset/1", self.root, self.size, self.mode, self.mean, self.std, self.names,
                "unlabelled" if self.targets is None else self.targets, self.stamps,
            )
        return self._fingerprint

    def __getstate__(self) -> dict[str, Any]:  # workers under spawn: no tensors to share
        state = dict(self.__dict__)
        state.pop("_mean_t")
        state.pop("_std_t")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._mean_t, self._std_t = torch.from_numpy(self.mean), torch.from_numpy(self.std)

    def __repr__(self) -> str:
        kind = "labelled" if self.labelled else "unlabelled"
        return f"ImageFolderDataset({self.root!r}, {len(self)} images, {self.input_shape}, {kind})"


__all__ = ["ImageFolderDataset", "check_header", "read_image", "strict_truncation"]
