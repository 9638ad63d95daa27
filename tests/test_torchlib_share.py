"""condense.export.torchlib: torch.onnx's op registry built once, each export given its own copy."""
from __future__ import annotations

import condense.export.torchlib as torchlib


class FakeRegistry:
    builds = 0

    def __init__(self):
        self.functions = {}

    @classmethod
    def from_torchlib(cls, opset_version=None):
        cls.builds += 1
        reg = cls()
        reg.functions = {"aten::add": ["add"], "opset": [opset_version]}
        return reg


def test_one_build_per_opset_and_copies_that_do_not_share_lists(monkeypatch):
    monkeypatch.setattr(torchlib, "_built", {})
    monkeypatch.setattr(torchlib, "_registry_class", lambda: FakeRegistry)
    original = FakeRegistry.__dict__["from_torchlib"]
    with torchlib.shared_torchlib_registry():
        a = FakeRegistry.from_torchlib(opset_version=18)
        b = FakeRegistry.from_torchlib(opset_version=18)
        c = FakeRegistry.from_torchlib(opset_version=20)
        a.functions["aten::add"].append("custom")  # an export registering its own op
        assert b.functions["aten::add"] == ["add"] and c.functions["opset"] == [20]
        assert FakeRegistry.builds == 2 and isinstance(a, FakeRegistry) and a is not b
        with torchlib.shared_torchlib_registry():  # nested: already shared, left alone
            FakeRegistry.from_torchlib(opset_version=18)
        assert FakeRegistry.builds == 2
    assert FakeRegistry.__dict__["from_torchlib"] is original  # torch's method is back
    FakeRegistry.from_torchlib(opset_version=18)
    assert FakeRegistry.builds == 3


def test_the_pinned_torch_has_the_internal_so_the_sharing_is_not_dead_code():
    assert torchlib._registry_class() is not None  # torch.onnx moved it: update REGISTRATION


def test_without_the_internal_exports_run_as_they_are(monkeypatch):
    monkeypatch.setattr(torchlib, "REGISTRATION", "torch.onnx._internal.no_such_module")
    assert torchlib._registry_class() is None
    with torchlib.shared_torchlib_registry():
        pass
    assert torchlib.share_torchlib_registry() is False
