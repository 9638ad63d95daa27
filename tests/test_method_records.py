"""A method's record is what the other surfaces read (issue 28): the recipe stage asks the
quantization record whether it trains, and the report's quantized-edit list is the records' edit
kinds (kept as a torch-free copy for reading JSON; this test keeps the two equal)."""
from __future__ import annotations

from condense.models.edits import EDITS
from condense.quantize import QUANTIZERS
from condense.recipes.stages import STAGES
from condense.report.compare import QUANT_EDITS


def test_the_reports_quantized_edits_are_the_records_edit_kinds():
    kinds = {k for name in QUANTIZERS.names() for k in QUANTIZERS.get(name).edit_kinds}
    assert kinds - {"fold_bn"} == QUANT_EDITS  # BN folding alone is not quantization
    assert all(k in EDITS for k in kinds)  # every kind a record names is replayable


def test_a_quantize_stage_trains_when_its_methods_record_says_so():
    from condense.quantize import resolve_config

    stage = STAGES.get("quantize")
    for name in QUANTIZERS.names():
        cfg = resolve_config({"method": name})[1]
        assert stage.trains_for(cfg) is QUANTIZERS.get(name).trains
    assert [n for n in QUANTIZERS.names() if QUANTIZERS.get(n).trains] == ["qat"]
    assert {QUANTIZERS.get(n).deploys for n in QUANTIZERS.names()} <= {"int8", "int8_dynamic", "packed"}


# -- one record per stage kind: recipes, validation and the CLI read it ---------------------------
KINDS = {"train", "finetune", "distill", "prune", "factorize", "reduce-depth", "quantize", "export", "evaluate",
         "tune", "pretrain", "reduce-data"}


def test_every_stage_kind_is_one_method_record():
    from condense.core.method import METHODS, Method

    METHODS.load_providers()
    assert set(METHODS.names()) == KINDS == set(STAGES.names())
    for name in METHODS.names():
        m = METHODS.get(name)
        assert isinstance(m, Method) and callable(m.apply) and m.help, name
        assert all(k in EDITS for k in m.edit_kinds), name  # what a record names, load() replays
    assert sorted(n for n in KINDS if METHODS.get(n).edits_structure) == ["factorize", "prune", "reduce-depth"]
    assert sorted(n for n in KINDS if METHODS.get(n).deploys == "auto") == ["quantize", "tune"]
    # every replayable edit is claimed by one method's record (BN folding and layer swaps aside)
    claimed = {k for n in KINDS for k in METHODS.get(n).edit_kinds}
    assert set(QUANT_EDITS) <= claimed and {"prune_channels", "factorize", "drop_blocks"} <= claimed


def _recipe(tmp_path, text):
    from condense.recipes import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("name: t\ndata: {name: digits}\nstages:\n  - {name: a, kind: train, model: {name: mlp, kwargs: {hidden: [16]}}}\n"
                 + text)
    return load_recipe(p)


def test_validation_reads_the_records(tmp_path):
    import pytest

    from condense.core.errors import ConfigError
    from condense.recipes import validate_recipe

    with pytest.raises(ConfigError, match=r"r.yaml:5: only factorize / prune / reduce-depth stages take 'recover:'"):
        validate_recipe(_recipe(tmp_path, "  - {name: b, kind: quantize, from: a, recover: {method: finetune}}\n"))
    with pytest.raises(ConfigError, match=r"r.yaml:5: a prune stage takes its model from 'from: <stage>', not 'model:'"):
        validate_recipe(_recipe(tmp_path, "  - {name: b, kind: prune, model: {name: mlp}, config: {method: channel}}\n"))
    with pytest.raises(ConfigError, match=r"r.yaml:5: stage 'b' \(distill\) has no input model .* and no 'model: "):
        validate_recipe(_recipe(tmp_path, "  - {name: b, kind: distill, teacher: a, from: none}\n"))


def test_a_new_stage_kind_is_one_record(tmp_path):
    """The claim of docs/design.md: a stage kind is a config, an `apply` and one `register` call;
    validation, the generic runner and `condense recipe kinds` pick it up with nothing else changed.
    The kind here is real: re-estimate BatchNorm statistics on training batches (adaptive BN)."""
    import dataclasses
    import json

    import pytest
    import torch

    import condense
    from condense.cli import main
    from condense.core.config import Config
    from condense.core.errors import ConfigError
    from condense.core.method import METHODS, Method, Outcome
    from condense.data import load_dataset
    from condense.models import build_model
    from condense.recipes import validate_recipe
    from condense.recipes.stages import StageContext, run_stage
    from condense.train.recover import recalibrate_batchnorm

    @dataclasses.dataclass
    class BNConfig(Config):
        batches: int = 4

    def apply(job):
        model = job.input()
        seen = recalibrate_batchnorm(model, job.splits.train, job.config.batches)
        return Outcome(model, info={"samples": seen})

    METHODS.register("bn-recalibrate", Method(family="train", parse=BNConfig.from_dict, apply=apply,
                                              help="re-estimate BatchNorm statistics"))
    try:
        recipe = _recipe(tmp_path, "  - {name: b, kind: bn-recalibrate, from: a, config: {batches: 2}}\n")
        cfgs = validate_recipe(recipe)
        assert cfgs[1] == BNConfig(batches=2)
        with pytest.raises(ConfigError, match=r"r.yaml:5: unknown key 'bathces'.*did you mean: batches"):
            validate_recipe(_recipe(tmp_path, "  - {name: b, kind: bn-recalibrate, from: a, config: {bathces: 2}}\n"))
        splits = load_dataset("digits", seed=0)
        torch.manual_seed(0)
        model = build_model("cnn", in_channels=1, image_size=8, num_classes=10)
        out = run_stage(StageContext(recipe, recipe.stages[1], 1, tmp_path / "b", splits, model, [], resume=False), cfgs[1])
        assert out.model is model and out.info == {"samples": 128}
        assert main(["recipe", "kinds", "--json"]) == 0
        # ...and the command line runs it through the same Job (`condense apply KIND MODEL`)
        condense.save(model, tmp_path / "cnn")
        assert main(["apply", "bn-recalibrate", str(tmp_path / "cnn"), "--data", "digits", "--set", "batches=3",
                     "--out", str(tmp_path / "bn"), "--json"]) == 0
        meta = json.loads((tmp_path / "bn" / "condense.json").read_text())
        assert meta["metrics"]["bn-recalibrate"] == {"samples": 192}
        assert main(["apply", "bn-recalibrate", str(tmp_path / "cnn"), "--data", "digits", "--recover", "method=none",
                     "--out", str(tmp_path / "bn2")]) == 2  # it does not edit structure: no recovery to configure
    finally:
        METHODS._items.pop("bn-recalibrate", None)
    assert "bn-recalibrate" not in METHODS


def test_structural_methods_share_one_edit_and_recover(tmp_path):
    """prune, factorize and reduce-depth report through `edit_and_recover`: the same info keys."""
    import torch

    from condense.data import load_dataset
    from condense.lowrank import factorize_and_recover, reduce_depth_and_recover
    from condense.models import build_model
    from condense.prune import prune_and_recover

    splits = load_dataset("digits", seed=0)

    def model():
        torch.manual_seed(0)
        return build_model("resnet", in_channels=1, image_size=8, num_classes=10, depth=14)

    none = {"method": "none"}
    runs = {
        "prune": prune_and_recover(model(), {"method": "channel", "ratio": 0.5}, none, splits.train, splits.val)[1],
        "factorize": factorize_and_recover(model(), {"rank_by": "params", "ratio": 0.5}, none, splits.train, splits.val)[1],
        "depth": reduce_depth_and_recover(model(), {"drop": 1}, none, splits.train, splits.val)[1],
    }
    common = {"recover", "before", "edited", "recovered", "val", "metric", "params_fraction", "macs_fraction"}
    for name, info in runs.items():
        assert common <= set(info), name
        assert set(info["val"]) >= {"before", "edited", "recovered"} and info["metric"] == "accuracy"
        assert info["recovered"]["params"] < info["before"]["params"], name
    assert runs["prune"]["edited"]["macs"] < runs["prune"]["before"]["macs"]


def test_every_records_command_exists():
    import argparse

    from condense.cli import build_parser
    from condense.core.method import METHODS

    METHODS.load_providers()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    named = {METHODS.get(n).cli for n in METHODS.names()} - {None}
    assert named and named <= set(sub.choices), named - set(sub.choices)


def test_a_misspelt_recovery_loss_fails_validation_at_its_line(tmp_path):
    import pytest

    from condense.core.errors import ConfigError
    from condense.recipes import validate_recipe

    text = ("  - name: p\n    kind: prune\n    from: a\n    config: {method: channel, ratio: 0.5}\n"
            "    recover:\n      method: distill\n      losses: [{name: soft_kdd, weight: 1.0}]\n")
    with pytest.raises(ConfigError, match=r"r.yaml:11: RecoverConfig.losses: unknown distillation loss 'soft_kdd'.*soft_kd"):
        validate_recipe(_recipe(tmp_path, text))


def test_a_dynamic_quantize_stage_deploys_the_ort_dynamic_file_and_keeps_a_storable_model(tmp_path):
    """The dynamic scheme's record deploys "int8_dynamic": the stage's measured file is ONNX
    Runtime's dynamic-int8 model, and its artifact the float model (torch's packed dynamic layers
    cannot be stored), so a recipe with a dynamic stage saves and measures instead of failing."""
    import onnx
    import torch

    import condense
    from condense.data import load_dataset
    from condense.recipes import validate_recipe
    from condense.recipes.stages import StageContext, run_stage

    recipe = _recipe(tmp_path, "  - {name: q, kind: quantize, from: a, config: {method: dynamic}}\n")
    cfg = validate_recipe(recipe)[1]
    splits = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = condense.build_model("mlp", in_features=64, num_classes=10, hidden=[32])
    out = run_stage(StageContext(recipe, recipe.stages[1], 1, tmp_path / "q", splits, model, [], resume=False), cfg)
    ops = {n.op_type for n in onnx.load(str(out.deployed_onnx)).graph.node}
    assert out.deployed_onnx.name == "model.dynamic.onnx" and {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    condense.save(out.model, tmp_path / "saved")  # the float model: storable
    assert any("dynamic int8" in n for n in out.notes)
