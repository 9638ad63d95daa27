"""CIFAR-10 from the standard python batches the user already has on disk.

The batches are pickles, so they are read with a restricted unpickler that resolves only the
few numpy globals an array needs; any other global (os.system, builtins.eval, ...) is refused
before it can be called, so a malicious file never executes anything.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from condense.core.errors import ConfigError, InputFileError
from condense.data.base import Splits, make_splits

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
DEFAULT_CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol 0-2 pickles store bytes as latin-1 text
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


_ALLOWED = _numpy_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and refuses every other global."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR batches were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise InputFileError(
                f"{self.path}: refused to load global {module}.{name} from a pickle "
                "(only numpy arrays and plain data are allowed; the file may be malicious)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise InputFileError(f"{self.path}: refused persistent id {pid!r} in a pickle")


def safe_load_pickle(path: Path) -> Any:
    """Load a pickle of numpy arrays / plain data, never executing anything else."""
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, path).load()
    except InputFileError:
        raise
    except Exception as e:  # corrupt / truncated pickles raise a zoo of exception types
        raise InputFileError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _str_keys(d: dict[Any, Any]) -> dict[str, Any]:
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in d.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    obj = safe_load_pickle(path)
    if not isinstance(obj, dict):
        raise InputFileError(f"{path}: expected a pickled dict with b'data' and b'labels', got {type(obj).__name__}")
    d = _str_keys(obj)
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise InputFileError(
            f"{path}: expected keys b'data' and b'labels', missing {missing}; found {sorted(d)}"
        )
    data, labels = d["data"], d["labels"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        shape = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        raise InputFileError(f"{path}: expected b'data' as a uint8 array of shape (N, 3072), got {shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise InputFileError(f"{path}: expected b'data' as uint8 pixels, got dtype {data.dtype}")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise InputFileError(f"{path}: pixel values must lie in 0..255, got {data.min()}..{data.max()}")
    try:
        y = np.asarray(labels)
    except Exception:  # anything odd is a bad file
        y = np.asarray([None])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InputFileError(f"{path}: expected b'labels' as a list of ints, got {type(labels).__name__}")
    if len(y) != len(data):
        raise InputFileError(f"{path}: {len(data)} images in b'data' but {len(y)} b'labels'")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise InputFileError(f"{path}: labels must lie in 0..9, got {y.min()}..{y.max()}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), y.astype(np.int64)


def _class_names(root: Path) -> list[str]:
    path = root / META_FILE
    if not path.is_file():
        return list(DEFAULT_CLASS_NAMES)
    obj = safe_load_pickle(path)
    names = _str_keys(obj).get("label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise InputFileError(f"{path}: expected b'label_names' with 10 class names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def _find_root(root: str | Path | None) -> Path:
    if root is None:
        raise ConfigError("cifar10: pass root=<folder holding data_batch_1..5 and test_batch>")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputFileError(f"{path}: CIFAR-10 folder not found")
    nested = path / "cifar-10-batches-py"
    if not (path / TRAIN_FILES[0]).exists() and nested.is_dir():
        path = nested
    for name in (*TRAIN_FILES, TEST_FILE):
        if not (path / name).is_file():
            raise InputFileError(
                f"{path / name}: missing CIFAR-10 batch (expected data_batch_1..5 and test_batch in {path})"
            )
    return path


def load_cifar10(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    root: str | Path | None = None,
    limit: int | None = None,
) -> Splits:
    """CIFAR-10 from the python batches in `root` (official test set; `limit` first N train images)."""
    path = _find_root(root)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"cifar10: limit must be a positive integer, got {limit!r}")
    xs, ys, have = [], [], 0
    for name in TRAIN_FILES:
        if limit is not None and have >= limit:
            break
        x, y = read_batch(path / name)
        xs.append(x)
        ys.append(y)
        have += len(y)
    x_train = np.concatenate(xs)[:limit]
    y_train = np.concatenate(ys)[:limit]
    if len(x_train) == 0:
        raise InputFileError(f"{path}: the training batches hold no images")
    x_test, y_test = read_batch(path / TEST_FILE)
    return make_splits(
        "cifar10",
        x_train.astype(np.float32) / 255.0,
        y_train,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        labelled_fraction=labelled_fraction,
        test=(x_test.astype(np.float32) / 255.0, y_test),
        num_classes=10,
        class_names=_class_names(path),
        info={"root": str(path)},
    )
