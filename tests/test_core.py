import dataclasses
import os
from typing import Literal

import pytest
import torch
from torch import nn

from condense.core import (
    Config,
    ConfigError,
    FeatureTap,
    Registry,
    UnknownNameError,
    atomic_path,
    atomic_write_text,
    select_modules,
)


def test_registry_did_you_mean():
    r = Registry("model")
    r.register("resnet", object())
    r.register("mobilenetv2", object())
    with pytest.raises(UnknownNameError, match=r"did you mean: resnet"):
        r.get("resnett")
    assert r.names() == ["mobilenetv2", "resnet"]
    with pytest.raises(ConfigError, match="already registered"):
        r.register("resnet", object())


@dataclasses.dataclass
class Inner(Config):
    k: int = 1


@dataclasses.dataclass
class Outer(Config):
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()
    inner: Inner = dataclasses.field(default_factory=Inner)
    limit: int | None = None

    def validate(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ConfigError(f"Outer.ratio must be in [0, 1), got {self.ratio}")


def test_config_round_trip_and_coercion():
    c = Outer.from_dict({"ratio": 0, "names": ["x", "y"], "inner": {"k": 3}})
    assert c.ratio == 0.0 and isinstance(c.ratio, float)
    assert c.names == ("x", "y") and c.inner.k == 3
    assert Outer.from_dict(c.to_dict()) == c


def test_config_errors_name_field_and_close_key():
    with pytest.raises(ConfigError, match=r"unknown key 'ratoi'.*did you mean: ratio"):
        Outer.from_dict({"ratoi": 0.2}, where="recipe.yaml stage prune")
    with pytest.raises(ConfigError, match=r"Outer.mode: expected one of"):
        Outer.from_dict({"mode": "c"})
    with pytest.raises(ConfigError, match=r"ratio must be in"):
        Outer(ratio=1.5)
    with pytest.raises(ConfigError, match=r"expected an integer"):
        Outer.from_dict({"inner": {"k": "three"}})
    with pytest.raises(ConfigError, match=r"expected a number"):
        Outer.from_dict({"ratio": True})


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.classifier = nn.Linear(4, 2)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def test_select_modules_language():
    net = Net()
    assert set(select_modules(net, ["Conv2d"])) == {"features.0", "features.2"}
    assert set(select_modules(net, ["re:^features\\.[02]$", "classifier"])) == {"features.0", "features.2", "classifier"}
    assert set(select_modules(net, None, ignore=["features.0"], default=("Conv2d", "Linear"))) == {"features.2", "classifier"}
    with pytest.raises(ConfigError, match=r"matches no module.*did you mean"):
        select_modules(net, ["clasifier"])
    with pytest.raises(ConfigError, match="bad regular expression"):
        select_modules(net, ["re:("])


def test_feature_tap_captures_and_removes_hooks():
    net = Net()
    x = torch.randn(2, 1, 6, 6)
    with FeatureTap(net, ["features.1", "classifier"]) as tap:
        out = net(x)
        assert tap["features.1"].shape == (2, 4, 4, 4)
        assert torch.equal(tap["classifier"], out)
    assert not net.features[1]._forward_hooks
    with pytest.raises(ConfigError, match="no module named 'featurs.1'.*did you mean"):
        FeatureTap(net, ["featurs.1"])


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_write_json_is_strict(tmp_path):
    """Every JSON condense writes parses with a strict parser: NaN / inf become null, with a warning."""
    import json
    import math
    import warnings

    from condense.core.io import atomic_write_json

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atomic_write_json(tmp_path / "m.json", {"loss": math.nan, "xs": [1.0, math.inf]})

    def reject(token):
        raise ValueError(token)

    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=reject) == {"loss": None, "xs": [1.0, None]}
    assert any("loss" in str(w.message) for w in caught)
