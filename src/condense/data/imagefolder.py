"""A folder of images, one sub-folder per class (optionally split into train/ and test/).

Two ways to read it, chosen by `load_imagefolder(lazy=...)`:

- eager (`lazy=False`): every image is decoded into one in-memory `ArrayDataset`. Corrupt and
  truncated files are found while loading and skipped (counted in `info["skipped"]`). Fastest
  per epoch, but memory grows with the folder (4 bytes per pixel and channel, plus copies).
- lazy (`lazy=True`): each split is an `ImageFolderDataset` that keeps only the file list and
  labels and decodes one image per `__getitem__`, in the DataLoader's worker processes
  (`TrainConfig.num_workers`). Peak memory does not grow with the number of images.

`lazy=None` (the default) picks lazy when the decoded float32 images would take more than
`EAGER_MAX_BYTES` (512 MiB: about 43k images at 32x32 RGB, or 890 at 224x224), and eager below.

Both modes use the same file list, the same seeded stratified split and the same normalisation
rule (per-channel mean / std of training images, in `info["normalize"]`; the lazy mode estimates
it from a fixed seeded sample of at most `stats_sample` training images), so for a small folder
they give the same tensors for the same files.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from condense.core.errors import ConfigError, InputFileError, did_you_mean
from condense.data.base import Splits, make_splits
from condense.data.images import ImageFolderDataset, check_header, read_image, strict_truncation
from condense.data.lazy import SampleReadError, names_array, split_positions

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MAX_REPORTED = 10
EAGER_MAX_BYTES = 512 * 2**20
VERIFY_MODES = ("none", "header", "full")
_CHUNK = 1024  # files per thread-pool task (one Future per file would cost memory at 80k files)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
    )


def _list_images(root: Path, folder: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(file names relative to `root` as a bytes array, int64 class ids) of every image under
    `folder/<class>/`, in a fixed order: classes sorted, then os.walk order with sorted names;
    hidden entries skipped. Each directory's names go to NumPy at once, so no list of every
    file's name is ever held (at 80k files that list would cost more than the arrays)."""
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for label, cls in enumerate(classes):
        if not (folder / cls).is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder / cls):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, root)
            keep = [os.path.join(rel, n) for n in sorted(filenames)
                    if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
            if keep:
                parts.append(names_array(keep))
                labels.append(np.full(len(keep), label, dtype=np.int64))
    if not parts:
        return names_array([]), np.zeros(0, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(labels)


# -- checks and statistics ---------------------------------------------------------------------------
def _bad_files(root: Path, names: np.ndarray, verify: str, size: tuple[int, int], mode: str) -> dict[int, str]:
    """{position: reason} of the files `verify` rejects ('none' opens no file)."""
    if verify == "none" or not len(names):
        return {}

    def check(start: int) -> list[tuple[int, str]]:
        out = []
        for i in range(start, min(start + _CHUNK, len(names))):
            path = os.path.join(root, os.fsdecode(names[i]))
            if verify == "full":
                res = read_image(path, size, mode)
                reason = res if isinstance(res, str) else None
            else:
                reason = check_header(path)
            if reason is not None:
                out.append((i, reason))
        return out

    workers = min(8, os.cpu_count() or 1)
    with strict_truncation() if verify == "full" else nullcontext(), ThreadPoolExecutor(workers) as pool:
        return {i: r for part in pool.map(check, range(0, len(names), _CHUNK)) for i, r in part}


def _drop_bad(
    folder: Path, names: np.ndarray, labels: np.ndarray, bad: dict[int, str], max_bad_fraction: float
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not len(names):
        raise InputFileError(f"{folder}: no image files found in its class folders")
    reported = [f"{os.fsdecode(names[i])} ({r})" for i, r in sorted(bad.items())]
    if len(bad) > max_bad_fraction * len(names) or len(bad) == len(names):
        raise InputFileError(
            f"{folder}: {len(bad)} of {len(names)} image files are unreadable or truncated "
            f"(more than max_bad_fraction={max_bad_fraction}); first: {'; '.join(reported[:3])}"
        )
    keep = np.ones(len(names), dtype=bool)
    keep[list(bad)] = False
    return names[keep], labels[keep], reported


def _estimate_normalize(ds: ImageFolderDataset, positions: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of the images at `positions`, in [0, 1] units."""
    def stats(i: int) -> np.ndarray:
        path = ds.path(int(i))
        arr = read_image(path, ds.size, ds.mode)
        if isinstance(arr, str):
            raise SampleReadError(f"{path}: cannot decode this image ({arr}) while estimating the "
                                  "normalisation; fix or remove it, or use verify='full'")
        x = arr.reshape(arr.shape[0], -1).astype(np.float64) / 255.0
        return np.stack([x.sum(1), (x * x).sum(1)])

    with strict_truncation(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        total = sum(pool.map(stats, positions), np.zeros((2, len(ds.mean))))
    count = len(positions) * ds.size[0] * ds.size[1]
    mean = total[0] / count
    var = (total[1] - count * mean * mean) / max(count - 1, 1)
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-6)
    return mean.astype(np.float32).tolist(), std.astype(np.float32).tolist()


# -- the two modes -----------------------------------------------------------------------------------
def _load_eager(
    root: Path, folder: Path, classes: list[str], size: tuple[int, int], mode: str, max_bad_fraction: float
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names, labels = _list_images(root, folder, classes)
    if not len(names):
        raise InputFileError(f"{folder}: no image files found in the class folders {classes}")
    workers = min(8, os.cpu_count() or 1)
    with strict_truncation(), ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda n: read_image(root / os.fsdecode(n), size, mode), names))
    bad = {i: r for i, r in enumerate(results) if isinstance(r, str)}
    names, labels, reported = _drop_bad(folder, names, labels, bad, max_bad_fraction)
    xs = [r for r in results if not isinstance(r, str)]
    return np.stack(xs), labels, reported


def _load_lazy(
    root: Path, lists: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str], size: tuple[int, int],
    mode: str, verify: str, max_bad_fraction: float, stats_sample: int, split_kwargs: dict[str, Any],
) -> Splits:
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    reported: list[str] = []
    for part, (names, labels) in lists.items():
        folder = root / part if part else root
        bad = _bad_files(root, names, verify, size, mode)
        names, labels, rep = _drop_bad(folder, names, labels, bad, max_bad_fraction)
        kept[part], reported = (names, labels), reported + rep
    official = "test" in kept
    train_part = "train" if official else ""
    names, y = kept[train_part]
    pos = split_positions(y, name="imagefolder", official_test=official, **split_kwargs)
    seed = split_kwargs.get("seed", 0)
    channels = 1 if mode == "L" else 3
    whole = ImageFolderDataset(root, names, y, size=size, mode=mode, mean=[0.0] * channels,
                               std=[1.0] * channels, class_names=classes)
    ref = pos.train if pos.unlabelled is None else np.concatenate([pos.train, pos.unlabelled])
    sample = np.sort(np.random.default_rng([seed, 1]).permutation(ref)[:stats_sample])
    mean, std = _estimate_normalize(whole, sample)
    whole = ImageFolderDataset(root, names, y, size=size, mode=mode, mean=mean, std=std,
                               stamps=whole.stamps, class_names=classes)
    if official:
        test = ImageFolderDataset(root, *kept["test"], size=size, mode=mode, mean=mean, std=std,
                                  class_names=classes,
                                  sample_ids=len(whole) + np.arange(len(kept["test"][0]), dtype=np.int64))
    else:
        test = whole.subset(pos.test)
    return Splits(
        name="imagefolder",
        train=whole.subset(pos.train),
        val=whole.subset(pos.val),
        test=test,
        num_classes=len(classes),
        input_shape=whole.input_shape,
        class_names=classes,
        unlabelled=None if pos.unlabelled is None else whole.subset(pos.unlabelled).without_labels(),
        info={
            "root": str(root), "skipped": len(reported), "skipped_files": reported[:MAX_REPORTED],
            "official_test": official, "lazy": True, "verify": verify,
            "normalize": {"mean": mean, "std": std, "sample": len(sample)},
        },
    )


def _parse_size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ConfigError(f"imagefolder: image_size must be an int or (height, width), got {image_size!r}")
    if min(size) < 1:
        raise ConfigError(f"imagefolder: image_size must be positive, got {image_size!r}")
    return size


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
    lazy: bool | None = None,
    verify: str = "header",
    stats_sample: int = 256,
) -> Splits:
    """Images in `root/<class>/` (or `root/train|test/<class>/`), resized, bad files skipped.

    `lazy`: True reads images per item (`ImageFolderDataset` splits), False decodes all into
    memory, None (default) is lazy above `EAGER_MAX_BYTES` of decoded float32 pixels.
    `verify` (lazy mode only; eager always decodes every file, which is 'full'):
    'header' (default) opens each file's header with Pillow up front (25-35 us a file on a local
    disk: 80k files in ~3 s) and skips files that are not images, empty or of an unknown format;
    'full' decodes every file once (skips truncated files too; O(1) memory but a full pass of
    decoding); 'none' opens nothing. Files skipped up front obey `max_bad_fraction` as in eager
    mode. A file that passes the check but fails to decode later (e.g. truncated) raises
    `SampleReadError` naming the file when its batch is made.
    `stats_sample`: how many training images (a seeded sample) estimate the lazy normalisation.
    """
    if root is None:
        raise ConfigError("imagefolder: pass root=<folder with one sub-folder per class>")
    if mode not in ("L", "RGB"):
        raise ConfigError(f"imagefolder: mode must be 'L' or 'RGB', got {mode!r}")
    size = _parse_size(image_size)
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ConfigError(f"imagefolder: max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    if verify not in VERIFY_MODES:
        raise ConfigError(f"imagefolder: verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}"
                          f"{did_you_mean(str(verify), VERIFY_MODES)}")
    if lazy is not None and not isinstance(lazy, bool):
        raise ConfigError(f"imagefolder: lazy must be true, false or null (automatic), got {lazy!r}")
    if isinstance(stats_sample, bool) or not isinstance(stats_sample, int) or stats_sample < 1:
        raise ConfigError(f"imagefolder: stats_sample must be a positive integer, got {stats_sample!r}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputFileError(f"{path}: image folder not found")

    official = (path / "train").is_dir() and (path / "test").is_dir()
    train_dir = path / "train" if official else path
    classes = _class_dirs(train_dir)
    if not classes:
        raise InputFileError(f"{train_dir}: expected one sub-folder per class, found none")
    if official:
        extra = sorted(set(_class_dirs(path / "test")) - set(classes))
        if extra:
            raise InputFileError(f"{path / 'test'}: class folders {extra} have no counterpart in {train_dir}")
    split_kwargs = dict(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                        labelled_fraction=labelled_fraction)
    channels = 1 if mode == "L" else 3
    if lazy is not False:
        parts = ("train", "test") if official else ("",)
        lists = {p: _list_images(path, path / p if p else path, classes) for p in parts}
        for p, (names, _) in lists.items():
            if not len(names):
                raise InputFileError(f"{path / p if p else path}: no image files found in the class folders {classes}")
        n_files = sum(len(v[0]) for v in lists.values())
        if lazy or n_files * channels * size[0] * size[1] * 4 > EAGER_MAX_BYTES:
            return _load_lazy(path, lists, classes, size, mode, verify, max_bad_fraction, stats_sample, split_kwargs)

    x, y, bad = _load_eager(path, train_dir, classes, size, mode, max_bad_fraction)
    test = None
    if official:
        x_test, y_test, bad_test = _load_eager(path, path / "test", classes, size, mode, max_bad_fraction)
        test = (x_test.astype(np.float32) / 255.0, y_test)
        bad += bad_test
    return make_splits(
        "imagefolder",
        x.astype(np.float32) / 255.0,
        y,
        test=test,
        num_classes=len(classes),
        class_names=classes,
        info={
            "root": str(path),
            "skipped": len(bad),
            "skipped_files": bad[:MAX_REPORTED],
            "official_test": official,
            "lazy": False,
        },
        **split_kwargs,
    )
