"""Lazy image folders: per-item decoding, same tensors as the eager mode, seeded splits, workers,
fingerprints and typed read errors. Every image is a real PNG written by Pillow in tmp_path."""
from __future__ import annotations

import os
import pickle
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import condense
from condense.core.errors import ConfigError, InputFileError
from condense.data import ImageFolderDataset, SampleReadError, load_dataset
from condense.data import imagefolder as imagefolder_mod
from condense.data.lazy import names_array, split_positions
from condense.data.loader import as_source

Image = pytest.importorskip("PIL.Image")


def _write_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 8, seed: int = 0,
                  size: tuple[int, int] = (20, 20)) -> None:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _all(ds) -> dict[str, torch.Tensor]:
    return as_source(ds).head(len(ds))


def test_lazy_items_and_batches(tmp_path):
    _write_folder(tmp_path / "imgs")
    s = load_dataset("imagefolder", root=tmp_path / "imgs", image_size=16, lazy=True)
    assert isinstance(s.train, ImageFolderDataset) and s.info["lazy"] is True
    assert s.input_shape == (3, 16, 16) and s.num_classes == 3 and s.class_names == ["cat", "dog", "eel"]
    assert len(s.train) + len(s.val) + len(s.test) == 24
    x, y = s.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.dim() == 0 and s.train.labelled
    batches = list(as_source(s.train).batches(4))
    assert [len(b["index"]) for b in batches] == [4] * (len(s.train) // 4) + [len(s.train) % 4] * (len(s.train) % 4 > 0)
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.from_numpy(s.train.sample_ids))
    assert batches[0]["input"].shape == (4, 3, 16, 16) and batches[0]["target"].dtype == torch.int64
    assert set(s.info["normalize"]) == {"mean", "std", "sample"} and s.info["normalize"]["sample"] == len(s.train)
    from torch.utils.data import DataLoader, Subset  # a split is an ordinary torch Dataset

    xb, yb = next(iter(DataLoader(s.train, batch_size=4)))
    assert torch.equal(xb, batches[0]["input"]) and torch.equal(yb, batches[0]["target"])
    sub = Subset(s.train, [2, 0])
    assert torch.equal(sub[1][0], x) and torch.equal(next(iter(DataLoader(sub, batch_size=2)))[1], torch.stack([s.train[2][1], y]))
    eager = load_dataset("imagefolder", root=tmp_path / "imgs", image_size=16, lazy=False)
    assert type(eager.train[0]) is type(s.train[0]) is tuple  # lazy or not, an item is (image, label)
    gray = load_dataset("imagefolder", root=tmp_path / "imgs", image_size=(8, 12), mode="L", lazy=True)
    assert gray.input_shape == (1, 8, 12) and gray.train[0][0].shape == (1, 8, 12)


@pytest.mark.parametrize("labelled_fraction", [None, 0.5])
def test_lazy_and_eager_give_the_same_tensors(tmp_path, labelled_fraction):
    _write_folder(tmp_path / "imgs", per_class=10)
    kw = dict(root=tmp_path / "imgs", image_size=16, seed=3, labelled_fraction=labelled_fraction)
    eager = load_dataset("imagefolder", lazy=False, **kw)
    lazy = load_dataset("imagefolder", lazy=True, **kw)
    assert eager.info["lazy"] is False
    np.testing.assert_allclose(lazy.info["normalize"]["mean"], eager.info["normalize"]["mean"], rtol=1e-5)
    np.testing.assert_allclose(lazy.info["normalize"]["std"], eager.info["normalize"]["std"], rtol=1e-5)
    for split in ("train", "val", "test") + (("unlabelled",) if labelled_fraction else ()):
        e, lz = getattr(eager, split), _all(getattr(lazy, split))
        assert len(e) == len(lz["input"]), split
        torch.testing.assert_close(lz["input"], e.inputs, atol=1e-5, rtol=0)
        if split == "unlabelled":
            assert "target" not in lz and not getattr(lazy, split).labelled
        else:
            assert torch.equal(lz["target"], e.targets)


def test_lazy_official_train_test_layout(tmp_path):
    _write_folder(tmp_path / "imgs" / "train", classes=("a", "b"), per_class=6)
    _write_folder(tmp_path / "imgs" / "test", classes=("a", "b"), per_class=2, seed=1)
    s = load_dataset("imagefolder", root=tmp_path / "imgs", image_size=12, lazy=True)
    assert s.info["official_test"] and len(s.test) == 4 and len(s.train) + len(s.val) == 12
    assert all(os.fsdecode(n).startswith("test") for n in s.test.names)
    e = load_dataset("imagefolder", root=tmp_path / "imgs", image_size=12, lazy=False)
    torch.testing.assert_close(_all(s.test)["input"], e.test.inputs, atol=1e-5, rtol=0)


def test_lazy_splits_deterministic_disjoint_stratified(tmp_path):
    _write_folder(tmp_path / "imgs", per_class=10)
    a = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True, seed=1)
    b = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True, seed=1)
    c = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True, seed=2)
    for split in ("train", "val", "test"):
        assert list(getattr(a, split).names) == list(getattr(b, split).names)
    assert list(a.train.names) != list(c.train.names)
    files = [set(getattr(a, s).names) for s in ("train", "val", "test")]
    assert sum(len(f) for f in files) == 30 and len(set.union(*files)) == 30
    assert np.bincount(a.test.targets).tolist() == [2, 2, 2]  # 20 % of each class
    pos = split_positions(np.repeat([0, 1, 2], 10), name="x", seed=1)
    assert sorted(np.concatenate([pos.train, pos.val, pos.test]).tolist()) == list(range(30))


def test_lazy_sample_ids_unique_across_splits_so_train_and_unlabelled_concatenate(tmp_path):
    from condense.data.views import concat

    _write_folder(tmp_path / "imgs", per_class=10)
    s = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True, seed=1, labelled_fraction=0.5)
    ids = [as_source(getattr(s, k)).ids() for k in ("train", "val", "test", "unlabelled")]
    joined = np.concatenate(ids)
    assert len(np.unique(joined)) == len(joined) == 30
    both = as_source(concat([s.train, s.unlabelled]))  # an SSL stage reads both parts as one source
    assert sorted(both.ids().tolist()) == sorted(np.concatenate(ids[::3]).tolist())
    assert s.train.uses_random is False  # decoding is deterministic: no per-item seeding


def test_workers_give_the_same_batches_as_one_process(tmp_path):
    _write_folder(tmp_path / "imgs", per_class=8)
    s = load_dataset("imagefolder", root=tmp_path / "imgs", image_size=8, lazy=True)
    src = as_source(s.train)
    one = list(src.batches(4, shuffle=True, seed=5, epoch=1, num_workers=0))
    two = list(src.batches(4, shuffle=True, seed=5, epoch=1, num_workers=2))
    assert len(one) == len(two) > 1
    for x, y in zip(one, two, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_fingerprint_cheap_stable_and_sensitive(tmp_path):
    _write_folder(tmp_path / "imgs", per_class=4)
    a = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True)
    b = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True)
    assert a.train.fingerprint() == b.train.fingerprint() != a.test.fingerprint()
    assert as_source(a.train).fingerprint() == as_source(b.train).fingerprint()
    assert a.train.without_labels().fingerprint() != a.train.fingerprint()
    other = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True, image_size=8)
    assert other.train.fingerprint() != a.train.fingerprint()
    victim = tmp_path / "imgs" / os.fsdecode(a.train.names[0])
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same pixels, new mtime
    assert load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True).train.fingerprint() != a.train.fingerprint()


def test_dataset_pickles_for_spawned_workers(tmp_path):
    _write_folder(tmp_path / "imgs", per_class=2)
    s = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True, val_fraction=0.0)
    back = pickle.loads(pickle.dumps(s.train))
    assert torch.equal(back[0][0], s.train[0][0]) and back.fingerprint() == s.train.fingerprint()


def test_verify_modes_skip_bad_files_up_front(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root, per_class=10)
    (root / "cat" / "garbage.png").write_bytes(b"this is not a png")
    header = load_dataset("imagefolder", root=root, lazy=True)  # verify='header' by default
    assert header.info["verify"] == "header" and header.info["skipped"] == 1
    assert "garbage.png" in header.info["skipped_files"][0]
    with pytest.raises(SampleReadError, match="garbage.png"):  # 'none' opens nothing up front
        load_dataset("imagefolder", root=root, lazy=True, verify="none", stats_sample=1000)
    _truncate(root / "dog" / "000.png")
    full = load_dataset("imagefolder", root=root, lazy=True, verify="full")
    assert full.info["skipped"] == 2 and any("000.png" in f for f in full.info["skipped_files"])
    eager = load_dataset("imagefolder", root=root, lazy=False)
    for split in ("train", "val", "test"):  # 'full' sees the same files as the eager mode
        torch.testing.assert_close(_all(getattr(full, split))["input"], getattr(eager, split).inputs, atol=1e-5, rtol=0)
    for i in range(3):
        (root / "eel" / f"junk{i}.png").write_bytes(b"")
    with pytest.raises(InputFileError, match=r"imgs: 4 of 34 image files"):
        load_dataset("imagefolder", root=root, lazy=True, max_bad_fraction=0.1)


def test_truncated_file_at_read_time_is_a_typed_error_naming_it(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root / "train", classes=("a", "b"), per_class=4)
    _write_folder(root / "test", classes=("a", "b"), per_class=2, seed=1)
    _truncate(root / "test" / "b" / "001.png")  # passes the header check, fails to decode
    s = load_dataset("imagefolder", root=root, lazy=True)
    assert s.info["skipped"] == 0
    for workers in (0, 2):
        with pytest.raises(SampleReadError, match=r"test/b/001\.png: cannot decode") as err:
            list(as_source(s.test).batches(2, num_workers=workers))
        assert isinstance(err.value, InputFileError)
        assert "Traceback" not in str(err.value) and "\n" not in str(err.value)
        # torch's re-raise leaves the DataLoader iterator in a reference cycle; freed by a later gc,
        # its worker shutdown then waits 5 s a worker. Clearing the frames frees it now.
        traceback.clear_frames(err.value.__traceback__)
    garbage = root / "train" / "a" / "zzz.png"
    garbage.write_bytes(b"not an image at all")
    ds = ImageFolderDataset(root, names_array(["train/a/zzz.png"]), np.zeros(1), size=(4, 4), mode="RGB",
                            mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(SampleReadError, match=str(garbage)):
        ds[0]


def test_worker_error_message_is_recovered():
    worker_text = ("Caught SampleReadError in DataLoader worker process 1.\nOriginal Traceback (most recent "
                   "call last):\n  File \"x.py\", line 1, in f\ncondense.data.lazy.SampleReadError: /d/x.png: bad\n")
    err = SampleReadError(worker_text)
    assert str(err) == "/d/x.png: bad (raised in a DataLoader worker process)"
    assert str(SampleReadError("/d/y.png: plain")) == "/d/y.png: plain"


def test_automatic_mode_and_option_errors(tmp_path, monkeypatch):
    _write_folder(tmp_path / "imgs", per_class=3)
    assert load_dataset("imagefolder", root=tmp_path / "imgs").info["lazy"] is False  # small: eager
    monkeypatch.setattr(imagefolder_mod, "EAGER_MAX_BYTES", 1000)
    auto = load_dataset("imagefolder", root=tmp_path / "imgs")
    assert auto.info["lazy"] is True and isinstance(auto.test, ImageFolderDataset)
    with pytest.raises(ConfigError, match=r"verify.*did you mean: header"):
        load_dataset("imagefolder", root=tmp_path / "imgs", verify="headr")
    with pytest.raises(ConfigError, match="stats_sample"):
        load_dataset("imagefolder", root=tmp_path / "imgs", stats_sample=0)
    with pytest.raises(ConfigError, match="lazy"):
        load_dataset("imagefolder", root=tmp_path / "imgs", lazy="yes")


def test_stats_come_from_a_bounded_seeded_sample(tmp_path):
    _write_folder(tmp_path / "imgs", per_class=10)
    a = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True, stats_sample=5)
    b = load_dataset("imagefolder", root=tmp_path / "imgs", lazy=True, stats_sample=5)
    assert a.info["normalize"] == b.info["normalize"] and a.info["normalize"]["sample"] == 5
    assert torch.equal(a.train[0][0], b.train[0][0])


def test_train_model_one_epoch_on_a_lazy_folder(tmp_path):
    _write_folder(tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class=10, size=(12, 12))
    s = load_dataset("imagefolder", root=tmp_path / "imgs", image_size=16, lazy=True)
    torch.manual_seed(0)
    model = condense.build_model("cnn", in_channels=3, image_size=16, num_classes=s.num_classes)
    result = condense.train_model(model, s.train, condense.TrainConfig(epochs=1, batch_size=8, progress="off"),
                                  val_data=s.val)
    assert result.epochs_run == 1 and result.steps == -(-len(s.train) // 8)  # a last batch of 4 in 28: kept
    assert np.isfinite(result.history[-1]["train_loss"])
