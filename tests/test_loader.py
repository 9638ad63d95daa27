"""Any data a PyTorch user has, through every verb: ArrayDataset, torch Dataset, DataLoader, dict batches.

The same `distill(...)` / `evaluate(...)` / `quantize(...)` call works on digits as an in-memory
ArrayDataset and on the same digits behind a user's own `torch.utils.data.Dataset` (with and
without worker processes) or `DataLoader`; a model that reads named inputs (a dict batch) is
declared once with an `InputSignature`.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

import condense
from condense.core.errors import ConfigError
from condense.data.loader import (
    DataError,
    as_source,
    collect,
    epoch_positions,
    example_inputs,
    without_labels,
)
from condense.data.views import concat, subset
from condense.models.signature import InputSignature, call_model, set_signature


class Images(Dataset):
    """A user's image Dataset over in-memory arrays: (image, label) tuples, optional random flip."""

    def __init__(self, split, flip: bool = False) -> None:
        self.x, self.y, self.flip = split.inputs.numpy(), split.targets.numpy(), flip

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.x[i].copy())
        if self.flip and random.random() < 0.5:  # a user's random transform (Python's RNG)
            x = x.flip(-1)
        return x, int(self.y[i])


class DictItems(Dataset):
    def __init__(self, n: int = 10) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return {"pixels": torch.full((3,), float(i)), "labels": i % 2}


def _digits_model(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return condense.build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=width)


# -- items and batches -----------------------------------------------------------------------------
def test_items_of_every_shape_become_dict_batches(digits_splits):
    b = next(as_source(Images(digits_splits.test)).batches(4))
    assert sorted(b) == ["index", "input", "target"] and b["input"].shape == (4, 1, 8, 8)
    assert b["index"].tolist() == [0, 1, 2, 3] and b["target"].dtype == torch.int64
    d = next(as_source(DictItems()).batches(4))
    assert sorted(d) == ["index", "pixels", "target"]  # `labels` read as the target
    assert d["pixels"][:, 0].tolist() == [0, 1, 2, 3] and d["target"].tolist() == [0, 1, 0, 1]
    t = next(as_source(torch.randn(5, 3)).batches(8))
    assert sorted(t) == ["index", "input"] and as_source(torch.randn(5, 3)).labelled is False


def test_bad_items_name_the_type_and_the_index():
    class Bad(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(2) if i < 2 else "a string"

    with pytest.raises(DataError, match=r"dataset item 2 is a builtins\.str, which cannot be batched"):
        list(as_source(Bad()).batches(4))

    class Ragged(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(i + 1), 0

    with pytest.raises(DataError, match="shapes differ"):
        list(as_source(Ragged()).batches(4))

    class Reserved(DictItems):
        def __getitem__(self, i):
            return {"input": torch.zeros(2), "index": i}

    with pytest.raises(DataError, match="'index' is reserved"):
        list(as_source(Reserved()).batches(2))

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2)

    with pytest.raises(DataError, match="IterableDataset"):
        as_source(Stream())
    with pytest.raises(DataError, match="expected an ArrayDataset, a torch Dataset, a DataLoader"):
        as_source([1, 2, 3])


def test_epoch_order_is_distributed_samplers_and_ranks_partition_it():
    n = 37
    single = epoch_positions(n, shuffle=True, seed=3, epoch=2)
    assert sorted(single) == list(range(n)) and single == epoch_positions(n, shuffle=True, seed=3, epoch=2)
    assert single != epoch_positions(n, shuffle=True, seed=3, epoch=1)
    ranks = [epoch_positions(n, shuffle=True, seed=3, epoch=2, rank=r, world=2) for r in range(2)]
    sampler = DistributedSampler(range(n), num_replicas=2, rank=1, shuffle=True, seed=3 * 1_000_003)
    sampler.set_epoch(2)
    assert ranks[1] == list(sampler)
    # step k of the two ranks (batch 4 each) is the single-process batch k of 8
    for k in range(4):
        both = sorted(ranks[0][4 * k : 4 * k + 4] + ranks[1][4 * k : 4 * k + 4])
        assert both == sorted(single[8 * k : 8 * k + 8])


def test_worker_processes_give_the_same_batches_also_with_random_transforms(digits_splits):
    src = as_source(Images(digits_splits.train, flip=True))
    kw = {"shuffle": True, "seed": 5, "epoch": 1}
    plain = list(src.batches(32, **kw))
    workers = list(src.batches(32, num_workers=2, **kw))
    resumed = list(src.batches(32, start=3, **kw))  # a resume mid-epoch at batch 3
    assert len(plain) == len(workers) == len(resumed) + 3
    for a, b in zip(plain, workers, strict=True):
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["index"], b["index"])
    for a, b in zip(plain[3:], resumed, strict=True):
        assert torch.equal(a["input"], b["input"])
    flipped = sum(not torch.equal(b["input"], torch.from_numpy(digits_splits.train.inputs.numpy()[b["index"]]))
                  for b in plain)
    assert flipped > 0  # the transform did run


def test_subset_concat_and_labels_keep_ids(digits_splits):
    ds = Images(digits_splits.test)
    sub = subset(ds, [5, 2, 9])
    assert as_source(sub).ids().tolist() == [5, 2, 9]
    assert next(as_source(sub).batches(3))["index"].tolist() == [5, 2, 9]
    both = concat([sub, subset(ds, [0, 1])])
    assert as_source(both).ids().tolist() == [5, 2, 9, 0, 1]
    with pytest.raises(DataError, match="share sample ids"):
        concat([sub, subset(ds, [2])])
    assert "target" not in next(without_labels(ds).batches(2))
    assert torch.equal(collect(ds, "target"), digits_splits.test.targets)
    assert example_inputs(ds, 2).shape == (2, 1, 8, 8)


def test_a_users_dataloader_is_used_as_built(digits_splits):
    loader = DataLoader(Images(digits_splits.test), batch_size=50)
    batches = list(as_source(loader).batches(999))  # the loader's own batch size wins
    assert [len(b["input"]) for b in batches][:2] == [50, 50] and batches[1]["index"][0] == 50
    shuffled = DataLoader(Images(digits_splits.test), batch_size=50, shuffle=True)
    assert "index" not in next(as_source(shuffled).batches(50))  # no stable id from a shuffling loader


# -- verbs -----------------------------------------------------------------------------------------
def test_evaluate_is_the_same_on_arrays_a_dataset_and_a_dataloader(digits_splits):
    model = _digits_model()
    ref = condense.evaluate(model, digits_splits.test)
    on_ds = condense.evaluate(model, Images(digits_splits.test), batch_size=37)
    on_loader = condense.evaluate(model, DataLoader(Images(digits_splits.test), batch_size=64))
    assert ref["accuracy"] == on_ds["accuracy"] == on_loader["accuracy"]
    assert ref["loss"] == pytest.approx(on_ds["loss"], rel=1e-6)


def test_the_same_distill_call_on_digits_arrays_and_a_users_image_dataset(digits_splits):
    teacher = condense.train_model(_digits_model(), digits_splits.train,
                                   condense.TrainConfig(epochs=3, lr=3e-3, progress="off")).model
    cfg = condense.DistillConfig(alpha=0.9, temperature=4, train=condense.TrainConfig(epochs=2, lr=3e-3, progress="off"))
    on_arrays = condense.distill(_digits_model(8), teacher, digits_splits.train, cfg, digits_splits.val)
    on_dataset = condense.distill(_digits_model(8), teacher, Images(digits_splits.train), cfg, Images(digits_splits.val))
    # same samples, same order, same ids: the same student, to float tolerance
    for (k, a), (_, b) in zip(on_arrays.state_dict().items(), on_dataset.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)
    cfg_workers = cfg.replace(train={**cfg.train.to_dict(), "num_workers": 2})
    with_workers = condense.distill(_digits_model(8), teacher, Images(digits_splits.train), cfg_workers,
                                    Images(digits_splits.val))
    for (k, a), (_, b) in zip(on_dataset.state_dict().items(), with_workers.state_dict().items(), strict=True):
        assert torch.equal(a, b), k  # worker processes change nothing


def test_resume_mid_epoch_is_bit_identical_on_a_dataset_with_workers(tmp_path, digits_splits):
    from condense.train import SupervisedTask, TrainConfig, fit
    from condense.train.callbacks import Callback
    from condense.train.signals import STOP, Interrupted

    class StopAt(Callback):
        def __init__(self, step):
            self.step = step

        def on_step_begin(self, state):
            if self.step is not None and state.step == self.step:
                STOP.signum = 15

    data = Images(digits_splits.train, flip=True)

    def cfg(folder):
        return TrainConfig(epochs=2, lr=3e-3, batch_size=64, num_workers=2, progress="off", checkpoint_dir=str(folder))

    ref = fit(SupervisedTask(_digits_model()), data, cfg(tmp_path / "a"), callbacks=[StopAt(None)])
    try:
        with pytest.raises(Interrupted):
            fit(SupervisedTask(_digits_model()), data, cfg(tmp_path / "b"), callbacks=[StopAt(23)])
    finally:
        STOP.clear()
    resumed = fit(SupervisedTask(_digits_model()), data, cfg(tmp_path / "b"), callbacks=[StopAt(None)], resume=True)
    for (k, a), (_, b) in zip(ref.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_quantize_calibrates_on_a_dataset_and_prune_recovers_on_one(digits_splits):
    from condense.prune.recover import RecoverConfig, prune_and_recover

    model = condense.train_model(_digits_model(), Images(digits_splits.train),
                                 condense.TrainConfig(epochs=2, lr=3e-3, progress="off")).model
    q = condense.quantize(model, condense.QuantizeConfig(method="static"), calibration=Images(digits_splits.train))
    assert condense.evaluate(q, digits_splits.test)["accuracy"] > 0.5
    before = sum(p.numel() for p in model.parameters())
    pruned, info = prune_and_recover(
        model, condense.PruneConfig.from_dict({"method": "channel", "ratio": 0.25}),
        RecoverConfig.from_dict({"method": "finetune", "train": {"epochs": 1, "progress": "off"}}),
        Images(digits_splits.train), Images(digits_splits.val))
    assert info["val"]["recovered"] is not None
    assert sum(p.numel() for p in pruned.parameters()) < before


# -- models with named inputs ------------------------------------------------------------------------
class TwoInputs(nn.Module):
    """A model reading two named fields (like `input_ids` + `attention_mask`)."""

    condense_signature = InputSignature(required=("pixels", "scale"), keyword=True)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, pixels, scale):
        return self.fc(pixels * scale)


class ScaledItems(DictItems):
    def __getitem__(self, i):
        return {"pixels": torch.full((3,), i / 10), "scale": torch.ones(3), "labels": i % 2}


def test_a_model_with_named_inputs_trains_evaluates_exports_and_profiles(tmp_path):
    model = TwoInputs()
    condense.train_model(model, ScaledItems(40), condense.TrainConfig(epochs=1, batch_size=8, progress="off"))
    metrics = condense.evaluate(model, ScaledItems(40))
    assert metrics["n"] == 40 and 0 <= metrics["accuracy"] <= 1
    example = example_inputs(ScaledItems(4), 1)
    assert sorted(example) == ["pixels", "scale"]
    res = condense.export_onnx(model, example, tmp_path / "two.onnx")
    assert res.checked_batches == [1, 3] and res.max_abs_diff < 1e-5
    on_onnx = condense.evaluate(str(res.path), ScaledItems(40))
    assert on_onnx["accuracy"] == metrics["accuracy"]
    prof = condense.profile(model, example, batch_sizes=(1, 4), repeats=3)
    assert prof["input_shape"] == {"pixels": [3], "scale": [3]} and prof["macs"] == 6


def test_a_batch_missing_a_field_the_model_reads_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"reads batch key\(s\) \['scale'\], but the batches have only"):
        call_model(TwoInputs(), {"pixels": torch.zeros(2, 3), "target": torch.zeros(2)})
    with pytest.raises(ConfigError, match=r"reads batch key\(s\) \['scale'\]"):
        condense.evaluate(TwoInputs(), DictItems(4))


def test_signatures_validate_and_round_trip():
    sig = InputSignature(("input_ids", "attention_mask"), ("token_type_ids",), True, {"input_ids": (1,)})
    assert InputSignature.from_dict(sig.to_dict()) == sig and sig.dynamic_axes("input_ids") == (0, 1)
    for bad in ({"required": ()}, {"required": ("target",)}, {"required": ("a",), "optional": ("b",)},
                {"required": ("a",), "dynamic": {"b": [1]}}, {"required": ("a",), "dynamic": {"a": [0]}},
                {"required": ("a",), "extra": 1}):
        with pytest.raises(ConfigError):
            InputSignature.from_dict(bad)
    m = set_signature(nn.Linear(2, 2), sig)
    assert m.condense_signature is sig


def test_train_config_data_options_parse_and_validate():
    cfg = condense.TrainConfig.from_dict({"num_workers": 2, "pin_memory": True, "compile": True,
                                          "find_unused_parameters": True})
    assert (cfg.num_workers, cfg.pin_memory, cfg.compile) == (2, True, True)
    with pytest.raises(ConfigError, match="num_workers must be >= 0"):
        condense.TrainConfig(num_workers=-1)
    with pytest.raises(ConfigError):
        condense.TrainConfig.from_dict({"num_worker": 2})


def test_reduce_data_takes_a_coreset_of_a_dataset_and_refuses_pca_on_one(digits_splits):
    from condense.reduce import CoresetConfig, PCAConfig

    ds = Images(digits_splits.train)
    res = condense.reduce_data(ds, CoresetConfig(fraction=0.1, strategy="k_center", on="inputs"))
    assert len(res.data) == len(res.positions) and as_source(res.data).ids().tolist() == res.positions.tolist()
    arrays = condense.reduce_data(digits_splits.train, CoresetConfig(fraction=0.1, strategy="k_center", on="inputs"))
    assert np.array_equal(res.positions, arrays.positions)  # same selection from the same pixels
    with pytest.raises(ConfigError, match="applies to in-memory data"):
        condense.reduce_data(ds, PCAConfig(n_components=8))
