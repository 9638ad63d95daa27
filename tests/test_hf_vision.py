"""Hugging Face image classifiers through `hf:`: built with AutoModelForImageClassification,
called with images (N, C, H, W) as `pixel_values`, trained, evaluated, saved / loaded and
exported like a zoo CNN; model types hf: does not wrap are refused with the factory route."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from condense.core.errors import ConfigError  # noqa: E402
from condense.models import build_model  # noqa: E402


def _vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=10))


def _convnext():
    return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        num_channels=1, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, patch_size=2, image_size=8, num_labels=10))


def _resnet():
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10))


SHAPES = {"vit": (1, 8, 8), "convnext": (1, 8, 8), "resnet": (3, 16, 16)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_vision")
    out = {}
    for name, make in (("vit", _vit), ("convnext", _convnext), ("resnet", _resnet)):
        torch.manual_seed(0)
        make().save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", ["vit", "convnext", "resnet"])
def test_image_folder_builds_an_image_classifier(folders, name) -> None:
    from condense.models.hf import HFImageClassifier
    from condense.models.signature import DEFAULT_SIGNATURE, signature_of

    model = build_model(f"hf:{folders[name]}")
    assert isinstance(model, HFImageClassifier)
    assert model.condense_spec.kwargs == {"task": "image-classification", "num_labels": 10}
    assert signature_of(model) == DEFAULT_SIGNATURE  # batch["input"] is passed as pixel_values
    x = torch.randn(4, *SHAPES[name])
    with torch.no_grad():
        y = model(x)
        ref = model.hf(pixel_values=x).logits
    assert isinstance(y, torch.Tensor) and y.shape == (4, 10)
    torch.testing.assert_close(y, ref)


def test_images_of_the_wrong_shape_are_one_config_error(folders) -> None:
    vit = build_model(f"hf:{folders['vit']}")
    with pytest.raises(ConfigError, match=r"takes images \(N, 1, H, W\), got \(2, 3, 8, 8\)"):
        vit(torch.randn(2, 3, 8, 8))
    with pytest.raises(ConfigError, match=r"ViTForImageClassification refused images of shape \(2, 1, 16, 16\): "
                                          r"Input image size"):
        vit(torch.randn(2, 1, 16, 16))


def test_text_task_on_an_image_folder_is_refused(folders) -> None:
    with pytest.raises(ConfigError, match="image model.*'image-classification'"):
        build_model(f"hf:{folders['vit']}", task="encoder")
    with pytest.raises(ConfigError, match="classification head has 10 labels"):
        build_model(f"hf:{folders['vit']}", num_labels=3)


def test_vision_backbone_folder_gets_a_fresh_head(tmp_path) -> None:
    torch.manual_seed(0)
    transformers.ViTModel(_vit().config, add_pooling_layer=False).save_pretrained(tmp_path / "backbone")
    with pytest.raises(ConfigError, match="no classification head; pass num_labels"):
        build_model(f"hf:{tmp_path / 'backbone'}")
    model = build_model(f"hf:{tmp_path / 'backbone'}", num_labels=4)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_train_evaluate_save_load_export(folders, digits_splits, tmp_path) -> None:
    import condense
    from condense.data.base import ArrayDataset
    from condense.train import TrainConfig, train_model

    torch.manual_seed(0)
    model = build_model(f"hf:{folders['vit']}")
    train = digits_splits.train
    small = ArrayDataset(train.inputs[:64].float(), train.targets[:64], torch.arange(64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_model(model, small, TrainConfig(epochs=1, max_steps=3, batch_size=16, lr=1e-3, progress="off"))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    metrics = condense.evaluate(model.eval(), digits_splits.test)
    assert 0.0 <= metrics["accuracy"] <= 1.0

    condense.save(model, tmp_path / "art")
    meta = json.loads((tmp_path / "art" / "condense.json").read_text())
    assert meta["hf"]["auto_class"] == "AutoModelForImageClassification" and meta["hf"]["transformers_loadable"]
    back = condense.load(tmp_path / "art")
    x = digits_splits.test.inputs[:5].float()
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    # the artifact is a transformers folder too
    opened = transformers.AutoModelForImageClassification.from_pretrained(str(tmp_path / "art"))
    with torch.no_grad():
        torch.testing.assert_close(opened.eval()(pixel_values=x).logits, model(x))
    # hf: on the saved folder builds the same model again
    again = build_model(f"hf:{tmp_path / 'art'}")
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))

    res = condense.export_onnx(model, x[:1], tmp_path / "vit.onnx")  # checks parity with ORT itself
    assert (tmp_path / "vit.onnx").is_file() and res is not None


def test_convnext_saves_loads_and_exports(folders, tmp_path) -> None:
    import condense

    model = build_model(f"hf:{folders['convnext']}")
    condense.save(model, tmp_path / "art")
    back = condense.load(tmp_path / "art")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    condense.export_onnx(back, x[:1], tmp_path / "c.onnx")


def test_cli_eval_on_a_saved_vision_folder(folders, tmp_path, capsys) -> None:
    import condense
    from condense.cli import main

    condense.save(build_model(f"hf:{folders['vit']}"), tmp_path / "art")
    assert main(["eval", str(tmp_path / "art"), "--data", "digits"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", f"hf:{folders['vit']}", "--data", "digits"]) == 0


def _config_only(folder: Path, cfg: dict) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(("cfg", "match"), [
    ({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"]},
     r"model_type 'wav2vec2' is not supported by hf: \(its model reads 'input_values'\)"),
    ({"model_type": "whisper", "is_encoder_decoder": True}, r"model_type 'whisper' is an encoder-decoder model"),
    ({"model_type": "visionish"}, r"model_type 'visionish' is unknown to transformers"),
])
def test_unsupported_model_types_are_refused_with_the_factory_route(tmp_path, cfg, match) -> None:
    folder = _config_only(tmp_path / "m", cfg)  # refused from config.json alone, before weights are read
    with pytest.raises(ConfigError, match=match) as info:
        build_model(f"hf:{folder}")
    assert "--model package.module:factory" in str(info.value)


def test_cli_profile_and_data_of_the_wrong_shape(folders, tmp_path, capsys) -> None:
    import condense
    from condense.cli import main

    condense.save(build_model(f"hf:{folders['vit']}"), tmp_path / "art")
    assert main(["profile", str(tmp_path / "art"), "--batch-sizes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] > 0
    assert main(["profile", f"hf:{folders['vit']}", "--batch-sizes", "1", "--json"]) == 0  # the folder's bytes
    assert json.loads(capsys.readouterr().out)["artifact_bytes"] > 0
    # digits are (1, 8, 8); this ResNet takes 3 channels: a one-line usage error, not a traceback
    assert main(["eval", f"hf:{folders['resnet']}", "--data", "digits"]) == 2
    assert "takes images (N, 3, H, W), got (" in capsys.readouterr().err


@pytest.mark.slow
def test_mobilenetv2_round_trip_and_export(tmp_path) -> None:
    import condense

    torch.manual_seed(0)
    transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(
        num_channels=3, image_size=16, depth_multiplier=0.25, num_labels=10)).save_pretrained(tmp_path / "mnv2")
    model = build_model(f"hf:{tmp_path / 'mnv2'}")
    x = torch.randn(2, 3, 16, 16)
    condense.save(model, tmp_path / "art")
    with torch.no_grad():
        # random init leaves logits near 1e-27 here: the last bit may differ between two allocations
        torch.testing.assert_close(condense.load(tmp_path / "art")(x), model(x), rtol=1e-4, atol=0)
    condense.export_onnx(model, x[:1], tmp_path / "m.onnx")
