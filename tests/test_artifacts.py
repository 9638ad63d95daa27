import json

import pytest
import torch

from condense.artifacts import META_NAME, WEIGHTS_NAME, load, save
from condense.core.errors import ConfigError, InputFileError


def test_round_trip_identical_outputs(tmp_path, tiny_model):
    x = torch.randn(5, 1, 8, 8)
    folder = save(tiny_model, tmp_path / "m", metrics={"acc": 0.5})
    meta = json.loads((folder / META_NAME).read_text())
    assert meta["architecture"] == {"name": "conftest:tiny_factory", "kwargs": {"num_classes": 10}}
    assert meta["edits"] == [] and meta["metrics"] == {"acc": 0.5}
    loaded = load(folder, trust_code=True)
    tiny_model.eval()
    assert torch.equal(loaded(x), tiny_model(x))


def test_save_refuses_model_without_spec(tmp_path):
    with pytest.raises(ConfigError, match="no architecture spec"):
        save(torch.nn.Linear(2, 2), tmp_path / "m")


def test_truncated_and_corrupt_weights(tmp_path, tiny_model):
    folder = save(tiny_model, tmp_path / "m")
    w = folder / WEIGHTS_NAME
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=r"model.safetensors: truncated"):
        load(folder, trust_code=True)
    w.write_bytes(data[:-4] + b"\x00\x01\x02\x03")
    with pytest.raises(InputFileError, match="sha256"):
        load(folder, trust_code=True)
    # without the recorded hash, the safetensors reader itself must reject a truncated file
    meta = json.loads((folder / META_NAME).read_text())
    meta["files"] = {}
    (folder / META_NAME).write_text(json.dumps(meta))
    w.write_bytes(data[:100])
    with pytest.raises(InputFileError, match="not a readable safetensors"):
        load(folder, trust_code=True)


def test_missing_and_incomplete(tmp_path, tiny_model):
    with pytest.raises(InputFileError, match="no such artifact folder"):
        load(tmp_path / "nope")
    folder = save(tiny_model, tmp_path / "m")
    (folder / META_NAME).unlink()
    with pytest.raises(InputFileError, match="incomplete"):
        load(folder)


def test_unknown_architecture_and_wrong_weights(tmp_path, tiny_model):
    folder = save(tiny_model, tmp_path / "m")
    meta_path = folder / META_NAME
    meta = json.loads(meta_path.read_text())
    meta["architecture"] = {"name": "conftest:tiny_factry", "kwargs": {}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="cannot rebuild the model.*no callable .tiny_factry."):
        load(folder, trust_code=True)
    meta["architecture"] = {"name": "conftest:tiny_factory", "kwargs": {"num_classes": 3}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match=r"weights do not fit the architecture .*classifier"):
        load(folder, trust_code=True)


def test_pickle_refused_unless_trusted(tmp_path, tiny_model):
    p = tmp_path / "model.pt"
    torch.save(tiny_model, p)
    with pytest.raises(InputFileError, match="refusing to load a pickle"):
        load(p)
    m = load(p, trust_pickle=True)
    assert isinstance(m, torch.nn.Module)


def test_pt_checkpoints_into_a_named_architecture(tmp_path, tiny_model):
    import os

    from condense.models import ModelSpec

    spec = ModelSpec("conftest:tiny_factory", {"num_classes": 10})
    x = torch.randn(3, 1, 8, 8)
    tiny_model.eval()
    sd, nested, whole = tmp_path / "sd.pt", tmp_path / "ckpt.pt", tmp_path / "whole.pt"
    torch.save(tiny_model.state_dict(), sd)
    torch.save({"state_dict": tiny_model.state_dict(), "epoch": 7}, nested)
    torch.save(tiny_model, whole)
    for p in (sd, nested):  # a state_dict: read without running code, strictly into the spec
        with pytest.raises(ConfigError, match="holds a state_dict.*spec=ModelSpec.*--model package.module:factory"):
            load(p, trust_pickle=True)
        m = load(p, spec=spec)
        assert torch.equal(m(x), tiny_model(x)) and m.condense_spec == spec and not m.training
        assert load(save(m, tmp_path / p.stem), trust_code=True).condense_spec == spec
    with pytest.raises(InputFileError, match=r"sd.pt \(into conftest:tiny_factory\): weights do not fit"):
        load(sd, spec=ModelSpec("conftest:tiny_factory", {"num_classes": 3}))
    # a whole pickled module still needs trust; with a spec it becomes a savable condense model
    with pytest.raises(InputFileError, match="refusing to load a pickle"):
        load(whole, spec=spec)
    m = load(whole, trust_pickle=True, spec=spec)
    assert type(m) is type(tiny_model) and m.condense_spec == spec and torch.equal(m(x), tiny_model(x))
    save(m, tmp_path / "from-pickle")
    # checking for a state_dict never unpickles code
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputFileError, match="refusing to load a pickle"):
        load(tmp_path / "evil.pt", spec=spec)
    assert not sentinel.exists()
    (tmp_path / "cut.pt").write_bytes(sd.read_bytes()[:64])
    with pytest.raises(InputFileError, match="cut.pt: cannot read this checkpoint"):
        load(tmp_path / "cut.pt", spec=spec)
    with pytest.raises(ConfigError, match="records its own architecture"):
        load(save(tiny_model, tmp_path / "art"), spec=spec)


def test_a_dynamic_int8_model_is_refused_by_save_with_its_layers_named(tmp_path):
    """torch's dynamic-int8 layers keep packed C++ state that safetensors cannot hold: a typed
    error naming them, and nothing written (not an AttributeError from deep inside save)."""
    import condense

    model = condense.build_model("mlp", in_features=64, num_classes=10, hidden=[32])
    q = condense.quantize(model, {"method": "dynamic"})
    with pytest.raises(condense.ConfigError, match=r"save: classifier, features.0.fc hold packed .* nothing was written"):
        condense.save(q, tmp_path / "out" / "dyn")
    assert not (tmp_path / "out").exists()
