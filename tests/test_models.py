"""Model zoo: every architecture builds by name, runs on digits/MNIST/CIFAR shapes and traces."""
from __future__ import annotations

import textwrap

import pytest
import torch
import torch.fx
from torch import nn

from condense.core.errors import ConfigError, UnknownNameError
from condense.models import MODELS, ModelSpec, build_model, list_models, model_spec
from condense.models.registry import check_model_args

ZOO = ["mlp", "cnn", "resnet", "mobilenetv2", "vgg", "lenet5"]
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# Keeps the whole-zoo shape tests fast; defaults are covered by the trace/export and seed tests.
FAST = {"mobilenetv2": {"width_mult": 0.5}}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, shape: tuple[int, int, int], num_classes: int = 10, **kw: object) -> nn.Module:
    return build_model(name, in_channels=shape[0], image_size=shape[1], num_classes=num_classes, **kw)


def test_zoo_is_registered_and_listed() -> None:
    assert set(ZOO) <= set(MODELS.names())
    listed = dict(list_models())
    for name in ZOO:
        assert listed[name] and "\n" not in listed[name]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ZOO)
def test_forward_shapes_eval_and_train(name: str, shape: tuple[int, int, int]) -> None:
    model = build(name, shape, num_classes=7, **FAST.get(name, {}))
    x = torch.randn(2, *shape)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.train()
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert isinstance(model.classifier, nn.Linear)
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last_linear is model.classifier


@pytest.mark.parametrize("name", ZOO)
def test_fx_trace_and_torch_export(name: str) -> None:
    model = build(name, (1, 8, 8)).eval()
    x = torch.randn(2, 1, 8, 8)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), model(x))
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("name", ZOO)
def test_no_inplace_activations(name: str) -> None:
    model = build(name, (3, 32, 32))
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    assert acts and not any(m.inplace for m in acts)


def test_mlp_tabular_in_features() -> None:
    model = build_model("mlp", in_features=13, num_classes=3, hidden=[32], dropout=0.1)
    assert model(torch.randn(4, 13)).shape == (4, 3)
    assert model.features[0].fc.in_features == 13


def test_cnn_teacher_and_student_sizes() -> None:
    teacher = build("cnn", (1, 8, 8))
    student = build("cnn", (1, 8, 8), width=8)
    assert 200_000 <= n_params(teacher) <= 500_000
    assert 10_000 <= n_params(student) <= 30_000


def test_resnet_structure_and_depth_validation() -> None:
    model = build("resnet", (3, 32, 32), depth=20)
    assert 250_000 <= n_params(model) <= 300_000  # ResNet-20: ~0.27M (He et al. 2016)
    projections = [n for n, m in model.named_modules() if n.endswith("shortcut") and not isinstance(m, nn.Identity)]
    assert len(projections) == 2  # start of stages 2 and 3
    with pytest.raises(ConfigError, match="6n\\+2"):
        build("resnet", (3, 32, 32), depth=7)


def test_mobilenetv2_width_mult_and_depthwise() -> None:
    small = build("mobilenetv2", (3, 32, 32), width_mult=0.5)
    full = build("mobilenetv2", (3, 32, 32))
    assert n_params(small) < n_params(full)
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs)
    assert any(m.groups == m.in_channels > 1 for m in convs)  # depthwise


def test_downsampling_adapts_to_tiny_images() -> None:
    for name in ["cnn", "resnet", "vgg", "mobilenetv2"]:
        model = build(name, (1, 1, 1), **FAST.get(name, {})).eval()
        assert model(torch.randn(2, 1, 1, 1)).shape == (2, 10)
    vgg = build("vgg", (1, 8, 8))
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 3  # 8 -> 4 -> 2 -> 1


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(UnknownNameError, match="resnet"):
        build_model("resnett")


@pytest.mark.parametrize(
    "kwargs",
    [{"width": 0}, {"image_size": 0}, {"num_classes": "ten"}, {"dropout": 1.5}, {"dropout": "x"}, {"no_such_arg": 1}],
)
def test_bad_kwargs_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_model("cnn", **kwargs)


def test_user_factory_by_reference(tmp_path, monkeypatch) -> None:
    (tmp_path / "tests_helpers_module.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def factory(num_classes=10):
                return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

            def not_a_model(num_classes=10):
                return {"num_classes": num_classes}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("tests_helpers_module:factory", num_classes=3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    spec = model_spec(model)
    assert model.condense_spec is spec
    assert spec.name == "tests_helpers_module:factory" and spec.kwargs == {"num_classes": 3}
    rebuilt = ModelSpec.from_dict(spec.to_dict()).build()
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        build_model("tests_helpers_module:not_a_model")


def test_factory_taking_its_own_name_argument(monkeypatch) -> None:
    """`build_model(name, /, **kwargs)`: a factory's own `name` (a wrapper around
    `timm.create_model(name=...)`) reaches it, and the spec rebuilds it."""
    seen = []

    def by_name(name: str = "small", num_classes: int = 10) -> nn.Module:
        seen.append(name)
        width = {"small": 4, "wide": 16}[name]
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.Linear(width, num_classes))

    monkeypatch.setitem(MODELS._items, "test_by_name", by_name)
    model = build_model("test_by_name", name="wide", num_classes=3)
    assert seen == ["wide"] and model[1].out_features == 16
    assert model.condense_spec.name == "test_by_name"
    assert model.condense_spec.kwargs == {"name": "wide", "num_classes": 3}
    rebuilt = ModelSpec.from_dict(model.condense_spec.to_dict()).build()
    assert seen == ["wide", "wide"] and rebuilt[1].out_features == 16
    check_model_args("test_by_name", {"name": "wide"})


def test_zoo_spec_attached_and_rebuilds() -> None:
    model = build_model("vgg", in_channels=1, image_size=8, cfg=[16, "M", 32])
    assert model.condense_spec.name == "vgg"
    assert model.condense_spec.kwargs == {"in_channels": 1, "image_size": 8, "cfg": [16, "M", 32]}
    assert model.condense_spec.build().state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("name", ZOO)
def test_same_seed_same_weights(name: str) -> None:
    torch.manual_seed(0)
    a = build(name, (1, 8, 8)).state_dict()
    torch.manual_seed(0)
    b = build(name, (1, 8, 8)).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
