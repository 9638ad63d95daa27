"""A folder of images, one sub-folder per class (optionally split into train/ and test/).

Every image is fully decoded (`.load()`), so corrupt and truncated files are found here and
skipped (counted in `info["skipped"]`), not discovered later as a crash mid-training. Too many
bad files means something is wrong with the folder, and that is an error.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from condense.core.errors import ConfigError, InputFileError
from condense.data.base import Splits, make_splits

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MAX_REPORTED = 10
_TRUNCATED_LOCK = threading.Lock()


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make sure Pillow refuses truncated images while we load (restored afterwards)."""
    from PIL import ImageFile

    with _TRUNCATED_LOCK:
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old


def _class_dirs(folder: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
    )


def _image_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
                out.append(p)
    return out


def _read_image(path: Path, size: tuple[int, int], mode: str) -> np.ndarray | str:
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


def _load_folder(
    folder: Path, classes: list[str], size: tuple[int, int], mode: str, max_bad_fraction: float, root: Path
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        if (folder / cls).is_dir():
            files.extend((p, label) for p in _image_files(folder / cls))
    if not files:
        raise InputFileError(f"{folder}: no image files found in the class folders {classes}")
    workers = min(8, os.cpu_count() or 1)
    with _strict_truncation(), ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda f: _read_image(f[0], size, mode), files))
    xs, ys, bad = [], [], []
    for (path, label), res in zip(files, results, strict=True):
        if isinstance(res, str):
            bad.append(f"{path.relative_to(root)} ({res})")
        else:
            xs.append(res)
            ys.append(label)
    if len(bad) > max_bad_fraction * len(files) or not xs:
        raise InputFileError(
            f"{folder}: {len(bad)} of {len(files)} image files are unreadable or truncated "
            f"(more than max_bad_fraction={max_bad_fraction}); first: {'; '.join(bad[:3])}"
        )
    return np.stack(xs), np.asarray(ys, dtype=np.int64), bad


def load_imagefolder(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    root: str | Path | None = None,
    image_size: int | tuple[int, int] = 32,
    mode: str = "RGB",
    max_bad_fraction: float = 0.1,
) -> Splits:
    """Images in `root/<class>/` (or `root/train|test/<class>/`), resized, bad files skipped."""
    if root is None:
        raise ConfigError("imagefolder: pass root=<folder with one sub-folder per class>")
    if mode not in ("L", "RGB"):
        raise ConfigError(f"imagefolder: mode must be 'L' or 'RGB', got {mode!r}")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ConfigError(f"imagefolder: image_size must be an int or (height, width), got {image_size!r}")
    if min(size) < 1:
        raise ConfigError(f"imagefolder: image_size must be positive, got {image_size!r}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ConfigError(f"imagefolder: max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputFileError(f"{path}: image folder not found")

    official = (path / "train").is_dir() and (path / "test").is_dir()
    train_dir = path / "train" if official else path
    classes = _class_dirs(train_dir)
    if not classes:
        raise InputFileError(f"{train_dir}: expected one sub-folder per class, found none")
    x, y, bad = _load_folder(train_dir, classes, size, mode, max_bad_fraction, path)
    test = None
    if official:
        extra = sorted(set(_class_dirs(path / "test")) - set(classes))
        if extra:
            raise InputFileError(f"{path / 'test'}: class folders {extra} have no counterpart in {train_dir}")
        x_test, y_test, bad_test = _load_folder(path / "test", classes, size, mode, max_bad_fraction, path)
        test = (x_test.astype(np.float32) / 255.0, y_test)
        bad += bad_test
    return make_splits(
        "imagefolder",
        x.astype(np.float32) / 255.0,
        y,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        labelled_fraction=labelled_fraction,
        test=test,
        num_classes=len(classes),
        class_names=classes,
        info={
            "root": str(path),
            "skipped": len(bad),
            "skipped_files": bad[:MAX_REPORTED],
            "official_test": official,
        },
    )
