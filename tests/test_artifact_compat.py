"""Artifacts written by an earlier condense still load, with the same outputs.

`tests/data/artifacts_v1/` holds small artifacts (a plain zoo CNN, a channel-pruned one, a static
int8 PTQ one, a factorized one) saved by `condense.save` at commit 7023fda, before
`condense/artifacts.py` became a package, and `expected.json`: each model's outputs on a fixed
input. They were made by running this file with that tree first on the path:

    PYTHONPATH=<old tree>/src python tests/test_artifact_compat.py tests/data/artifacts_v1

Never regenerate them with the current code: their point is to be old.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

import condense

DATA = Path(__file__).parent / "data" / "artifacts_v1"
NAMES = ("plain", "pruned", "quant_static", "factorized")


def _input() -> torch.Tensor:
    return torch.linspace(-2.0, 2.0, 4 * 64).reshape(4, 1, 8, 8)


def _cnn(width: int = 4) -> torch.nn.Module:
    return condense.build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=width, depth=1, stages=2)


def _make(out: Path) -> None:
    from condense.prune import make_permanent

    torch.manual_seed(0)
    x, calib = _input(), torch.randn(32, 1, 8, 8)
    models = {"plain": _cnn().eval()}
    pruned = _cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stale BatchNorm statistics: irrelevant to a format check
        condense.prune(pruned, condense.PruneConfig.from_dict({"method": "channel", "ratio": 0.5}))
    make_permanent(pruned)
    models["pruned"] = pruned.eval()
    models["quant_static"] = condense.quantize(_cnn().eval(), None, calibration=calib).eval()
    models["factorized"] = condense.factorize(_cnn(16).eval(), {"method": "svd", "conv": "channel", "rank": 2, "round_to": 1}).eval()
    expected = {}
    with torch.no_grad():
        for name, model in models.items():
            condense.save(model, out / name)
            expected[name] = model(x).tolist()
    (out / "expected.json").write_text(json.dumps(expected))


@pytest.mark.parametrize("name", NAMES)
def test_artifact_saved_by_an_earlier_version_loads_with_the_same_outputs(name):
    expected = json.loads((DATA / "expected.json").read_text())
    model = condense.load(DATA / name)
    from condense.artifacts import read_metadata

    meta = read_metadata(DATA / name)
    assert meta["condense_version"] and meta["format"] == "condense-artifact/1"
    if name != "plain":
        assert meta["edits"], f"{name}: the fixture should carry a structural edit log to replay"
    with torch.no_grad():
        got = model(_input())
    torch.testing.assert_close(got, torch.tensor(expected[name]), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    _make(target)
