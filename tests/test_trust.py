"""Opening a file never runs code the user did not choose, and metadata cannot allocate what the
weights file does not hold (docs/security.md).

- a `package.module:factory` named by an artifact's condense.json or by a recipe is refused
  (exit 3, naming the file, the spec and --trust-code) before its module is imported, unless the
  user passes --trust-code / trust_code=True or registered the factory in the process;
- the architecture is built on the meta device and checked against the safetensors header before
  anything real is allocated: a huge width or rank in the metadata is exit 3, fast and small;
- weights holding NaN / Inf load with a warning naming the file and the tensor.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from condense.artifacts import META_NAME, WEIGHTS_NAME, load, save
from condense.cli import main
from condense.core.errors import InputFileError
from condense.models import MODELS, ModelSpec, UntrustedCodeError, build_model
from condense.recipes import load_recipe, resume_run, run_recipe, validate_recipe

FACTORY = """\
from pathlib import Path

from torch import nn

Path(__file__).with_suffix(".imported").touch()  # proof that the module was imported


def make(hidden: int = 16):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
"""


def _user_module(tmp_path: Path, monkeypatch, name: str) -> Path:
    """A factory module `name` in tmp_path (importable); returns the marker its import creates."""
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path / f"{name}.imported"


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / META_NAME).read_text())
    meta.update(changes)
    (folder / META_NAME).write_text(json.dumps(meta))


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_an_artifact_naming_a_factory_is_refused_before_its_module_is_imported(tmp_path, monkeypatch):
    marker = _user_module(tmp_path, monkeypatch, "trust_user_nets_a")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    folder = save(net, tmp_path / "m", spec=ModelSpec("trust_user_nets_a:make", {}))  # save imports nothing
    assert not marker.exists()
    with pytest.raises(UntrustedCodeError) as e:
        load(folder)
    msg = str(e.value)
    assert str(folder / META_NAME) in msg and "'trust_user_nets_a:make'" in msg and "--trust-code" in msg
    assert "trust_code=True" in msg and "--model package.module:factory" in msg  # why a saved model of yours needs it
    assert e.value.exit_code == 3 and isinstance(e.value, InputFileError)
    assert not marker.exists() and "trust_user_nets_a" not in sys.modules  # nothing was imported
    # the user opts in for this load: built by the factory, weights strict
    x = torch.randn(3, 1, 8, 8)
    loaded = load(folder, trust_code=True)
    assert marker.exists() and torch.equal(loaded(x), net.eval()(x))


def test_a_registered_factory_needs_no_opt_in_and_no_import(tmp_path, monkeypatch):
    name = "trust_nowhere_module:make"  # no such module: the registry answers, nothing is imported

    def make(hidden: int = 16) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    monkeypatch.setitem(MODELS._items, name, make)
    model = build_model(name, hidden=8)
    folder = save(model, tmp_path / "m")
    assert json.loads((folder / META_NAME).read_text())["architecture"]["name"] == name
    assert load(folder).condense_spec == ModelSpec(name, {"hidden": 8})
    # the zoo needs no opt-in either
    assert isinstance(load(save(build_model("mlp", in_features=64, num_classes=10), tmp_path / "z")), nn.Module)


@pytest.fixture
def zoo_artifact(tmp_path):
    torch.manual_seed(0)
    return save(build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8), tmp_path / "cnn")


@pytest.mark.parametrize("command,spec", [
    ("eval", {"name": "os:system", "kwargs": {"command": "touch PWNED"}}),
    ("profile", {"name": "subprocess:run", "kwargs": {"args": ["sh", "-c", "touch PWNED"]}}),
    ("export", {"name": "os:system", "kwargs": {"command": "touch PWNED"}}),
])
def test_cli_refuses_an_artifact_that_names_a_command_and_runs_nothing(zoo_artifact, tmp_path, capsys, monkeypatch,
                                                                        command, spec):
    monkeypatch.chdir(tmp_path)
    _edit_meta(zoo_artifact, architecture=spec)
    code, _, err = _run(capsys, command, str(zoo_artifact), "--data", "digits")
    assert code == 3, err
    assert str(zoo_artifact / META_NAME) in err and repr(spec["name"]) in err and "--trust-code" in err
    assert not (tmp_path / "PWNED").exists()


def test_cli_trust_code_reopens_a_model_saved_from_model_factory(tmp_path, capsys, monkeypatch):
    marker = _user_module(tmp_path, monkeypatch, "trust_user_nets_b")
    from trust_user_nets_b import make  # the user's own code, imported by the user

    torch.save(make().state_dict(), tmp_path / "w.pt")
    marker.unlink()
    del sys.modules["trust_user_nets_b"]
    out = tmp_path / "pruned"
    code, _, err = _run(capsys, "prune", str(tmp_path / "w.pt"), "--model", "trust_user_nets_b:make", "--data", "digits",
                        "--ratio", "0.5", "--recover", "none", "--out", str(out), "--json")
    assert code == 0, err  # --model on the command line is the user's own choice
    marker.unlink()
    del sys.modules["trust_user_nets_b"]
    code, _, err = _run(capsys, "eval", str(out), "--json")
    assert code == 3 and "needs --trust-code" in err and not marker.exists()
    code, got, err = _run(capsys, "eval", str(out), "--trust-code", "--json")
    assert code == 0, err
    assert json.loads(got)["n"] > 0 and marker.exists()


RECIPE = """\
name: t
data: {name: digits}
measure: {batch_sizes: [1], repeats: 3, warmup: 1}
stages:
  - name: teacher
    kind: train
    model: {name: "MODEL", kwargs: KWARGS}
    train: {epochs: 1}
"""


def _recipe(tmp_path: Path, model: str, kwargs: str = "{}", extra: str = "") -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE.replace("MODEL", model).replace("KWARGS", kwargs) + extra)
    return p


def test_a_recipe_naming_a_command_is_refused_by_validate_and_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _recipe(tmp_path, "os:system", "{command: touch PWNED}")
    with pytest.raises(UntrustedCodeError, match=r"r.yaml:7: stage 'teacher': names the model factory 'os:system'.*--trust-code"):
        validate_recipe(load_recipe(p))
    code, _, err = _run(capsys, "recipe", "validate", str(p))
    assert code == 3 and "r.yaml:7" in err and "--trust-code" in err
    code, _, err = _run(capsys, "run", str(p), "--out", str(tmp_path / "run"))
    assert code == 3 and "'os:system'" in err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "run").exists()


def test_a_trusted_recipe_with_a_user_factory_runs_and_resumes(tmp_path, monkeypatch):
    marker = _user_module(tmp_path, monkeypatch, "trust_user_nets_c")
    p = _recipe(tmp_path, "trust_user_nets_c:make", "{hidden: 8}",
                "  - name: int8\n    kind: quantize\n    config: {method: static, calibration_samples: 32}\n")
    with pytest.raises(UntrustedCodeError):
        run_recipe(p, tmp_path / "run", quiet=True)
    assert not marker.exists() and not (tmp_path / "run").exists()
    assert main(["recipe", "validate", str(p), "--trust-code"]) == 0
    report = run_recipe(p, tmp_path / "run", quiet=True, trust_code=True)  # stage 2 reads stage 1's artifact back
    assert [r["stage"] for r in report["stages"]] == ["teacher", "int8"] and marker.exists()
    with pytest.raises(UntrustedCodeError):
        resume_run(tmp_path / "run", quiet=True)
    assert resume_run(tmp_path / "run", quiet=True, trust_code=True)["stages"][0]["stage"] == "teacher"


# -- metadata cannot allocate what the weights file does not hold -------------------------------------

def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _refused_fast_and_small(folder: Path, pattern: str) -> None:
    rss, t0 = _maxrss_mb(), time.perf_counter()
    with pytest.raises(InputFileError, match=pattern):
        load(folder)
    assert time.perf_counter() - t0 < 10 and _maxrss_mb() - rss < 500


def test_a_huge_width_in_condense_json_is_refused_before_allocating(zoo_artifact, capsys):
    _edit_meta(zoo_artifact, architecture={"name": "cnn", "kwargs": {"in_channels": 1, "image_size": 8,
                                                                      "num_classes": 10, "width": 10**6}})
    _refused_fast_and_small(zoo_artifact, r"model.safetensors: the architecture in condense.json needs .* bytes .*before "
                                          r"its edits .*refused before allocating")
    code, _, err = _run(capsys, "eval", str(zoo_artifact), "--data", "digits")
    assert code == 3 and "refused before allocating" in err and "Traceback" not in err


def test_a_wider_architecture_names_the_file_and_the_first_mismatching_tensor(zoo_artifact):
    _edit_meta(zoo_artifact, architecture={"name": "cnn", "kwargs": {"in_channels": 1, "image_size": 8,
                                                                      "num_classes": 10, "width": 16}})
    first = next(iter(build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=16).state_dict()))
    _refused_fast_and_small(zoo_artifact, rf"{WEIGHTS_NAME}: weights do not fit the architecture .*shape mismatches, "
                                          rf"e\.g\. {first}: file \(8, ")


def test_a_huge_shape_in_the_edit_log_is_refused_before_allocating(zoo_artifact):
    # a low-rank replacement of the classifier with an absurd rank: 10**12 x 16 floats
    layer = next(n for n, m in build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8).named_modules()
                 if isinstance(m, nn.Linear))
    _edit_meta(zoo_artifact, edits=[{"kind": "factorize", "params": {"layers": {layer: {"form": "linear",
                                                                                        "rank": [10**12]}}}}])
    _refused_fast_and_small(zoo_artifact, r"model.safetensors: weights do not fit the architecture")


def test_a_huge_example_input_in_the_edit_log_is_never_allocated(tmp_path, digits_splits):
    import condense

    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8)
    condense.prune(model, {"method": "channel", "ratio": 0.5}, example_inputs=digits_splits.test.inputs[:1])
    folder = save(model, tmp_path / "p")
    meta = json.loads((folder / META_NAME).read_text())
    meta["edits"][0]["params"]["input_shapes"] = [[10**6, 1, 8, 8]]  # 256 MB of zeros when real; traced on meta
    (folder / META_NAME).write_text(json.dumps(meta))
    rss = _maxrss_mb()
    loaded = load(folder)
    assert _maxrss_mb() - rss < 200
    x = digits_splits.test.inputs[:4]
    assert torch.equal(loaded(x), model.eval()(x))


def test_a_truncated_header_entry_is_refused(zoo_artifact):
    w = zoo_artifact / WEIGHTS_NAME
    data = w.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**9  # points past the end of the file
    raw = json.dumps(header).encode()
    w.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    _edit_meta(zoo_artifact, files={})
    with pytest.raises(InputFileError, match=rf"not a readable safetensors file \(bad header entry for tensor '{name}'"):
        load(zoo_artifact)


def test_non_finite_weights_load_with_a_warning_naming_the_tensor(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", in_features=64, num_classes=10)
    name, p = next(iter(model.named_parameters()))
    with torch.no_grad():
        p[0, 0] = float("nan")
    folder = save(model, tmp_path / "m")
    with pytest.warns(RuntimeWarning, match=rf"{WEIGHTS_NAME}: tensor '{name}' holds non-finite values"):
        load(folder)


def _edited_models(splits):
    """One small model per kind of edit log a saved model can carry."""
    import condense
    from condense.prune.masks import make_permanent
    from condense.quantize.qat import QATConfig, prepare_qat
    from condense.quantize.qat_convert import convert_qat

    x = splits.test.inputs[:16]

    def cnn():
        torch.manual_seed(0)
        return build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8)

    def mlp():
        torch.manual_seed(0)
        return build_model("mlp", in_features=64, num_classes=10)

    yield "static", condense.quantize(cnn(), {"method": "static", "calibration_samples": 64}, calibration=splits.train)
    yield "weight_only", condense.quantize(mlp(), {"method": "weight_only"})
    qat = prepare_qat(cnn(), QATConfig(), calibration=x)
    yield "qat", qat
    yield "qat_convert", convert_qat(qat, x)
    yield "qat_weight_only", convert_qat(prepare_qat(mlp(), QATConfig(quantize_activations=False), calibration=x), x)
    masked = cnn()
    condense.prune(masked, {"method": "magnitude", "ratio": 0.5})
    yield "masks", make_permanent(masked)
    pruned = cnn()
    condense.prune(pruned, {"method": "channel", "ratio": 0.5}, example_inputs=x[:1], data=splits.train)
    yield "channel", pruned


def test_every_edit_kind_loads_through_the_meta_device(tmp_path, digits_splits, monkeypatch):
    """Built on meta, checked against the header, materialised with to_empty: the architecture is
    built once (never again for real) and the outputs are the saved model's."""
    built = []
    real_build = ModelSpec.build
    monkeypatch.setattr(ModelSpec, "build", lambda self, **kw: built.append(self.name) or real_build(self, **kw))
    x = digits_splits.test.inputs[:16]
    for name, model in _edited_models(digits_splits):
        folder = save(model.eval(), tmp_path / name)
        assert json.loads((folder / META_NAME).read_text())["edits"], name
        built.clear()
        loaded = load(folder)
        assert len(built) == 1, name
        assert torch.equal(loaded(x), model(x)), name


def test_hugging_face_unsaved_buffers_are_reinitialised_else_rebuilt(tmp_path, monkeypatch):
    """transformers' position ids are not in the weights file: after to_empty, transformers'
    own initialiser writes them; if it did not, the model is built again for real."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel

    import condense.artifacts as A

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    model = build_model(f"hf:{tmp_path / 'bert'}")
    folder = save(model, tmp_path / "art")
    batch = {"input_ids": torch.randint(0, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    with torch.no_grad():
        ref = model.eval()(**batch)
    built = []
    real = A.build_from_artifact
    monkeypatch.setattr(A, "build_from_artifact", lambda *a, **k: built.append(1) or real(*a, **k))
    with torch.no_grad():
        assert torch.equal(load(folder)(**batch), ref) and len(built) == 1  # meta only
        monkeypatch.setattr(type(model.hf), "_init_weights", lambda self, module: None)
        built.clear()
        assert torch.equal(load(folder)(**batch), ref) and len(built) == 2  # meta, then for real
    # a config.json whose sizes the weights do not hold is refused before allocating
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 10**10
    (folder / "config.json").write_text(json.dumps(config))
    _edit_meta(folder, files={})
    _refused_fast_and_small(folder, r"model.safetensors: the architecture in condense.json needs .* bytes")
