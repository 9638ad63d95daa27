"""One ATen -> ONNX op registry per process for torch.onnx's exporter.

torch.onnx's torch.export-based exporter rebuilds its registry of ATen -> ONNX decompositions
from the installed torchlib on every export (`ONNXRegistry.from_torchlib`, the same registry each
time). A recipe exports every stage (the measured `.onnx` of each model); three warm exports of a
small MLP took 2.10 CPU-s rebuilding it and 0.96 sharing it (benchmarks/overheads.py).

`shared_torchlib_registry()` builds it once per opset and process, and hands each export a copy
of its own (its own lists, so an export that registers a custom op changes only its copy).
Everything else in an export (torch.export, decompositions, translation) runs as before. It
touches a torch internal, so it is scoped (`export_onnx` wraps its own `torch.onnx.export` call
and puts torch's method back afterwards) and guarded: when this torch has no such internal, it
does nothing and exports cost what they cost.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any

#: the torch module whose `ONNXRegistry.from_torchlib` builds the registry (torch 2.5+)
REGISTRATION = "torch.onnx._internal.exporter._registration"

_built: dict[Any, Any] = {}
_lock = threading.Lock()


def _copy(cls: type, src: Any) -> Any:
    copy = cls.__new__(cls)
    copy.__dict__.update(src.__dict__)
    copy.functions = {k: list(v) for k, v in src.functions.items()}
    return copy


def sharing_from_torchlib(build: Any) -> classmethod:
    """A `from_torchlib` that calls torch's `build` once per opset version and returns copies."""

    def from_torchlib(cls, opset_version=None):
        with _lock:
            if opset_version not in _built:
                _built[opset_version] = build() if opset_version is None else build(opset_version=opset_version)
            return _copy(cls, _built[opset_version])

    from_torchlib.condense_shared = True  # type: ignore[attr-defined]
    return classmethod(from_torchlib)


def _registry_class() -> type | None:
    try:
        cls = importlib.import_module(REGISTRATION).ONNXRegistry
    except (ImportError, AttributeError):
        return None
    src = cls.__dict__.get("from_torchlib")
    if not isinstance(src, classmethod) or not hasattr(cls(), "functions"):
        return None
    return cls


def share_torchlib_registry(module: Any | None = None) -> bool:
    """Share the registry for the rest of the process (the test suite does this once); False
    when this torch lacks the internal."""
    cls = getattr(module, "ONNXRegistry", None) if module is not None else _registry_class()
    if cls is None or not isinstance(cls.__dict__.get("from_torchlib"), classmethod):
        return False
    original = cls.__dict__["from_torchlib"]
    if not getattr(original.__func__, "condense_shared", False):
        cls.from_torchlib = sharing_from_torchlib(cls.from_torchlib)
    return True


@contextlib.contextmanager
def shared_torchlib_registry() -> Iterator[None]:
    """Within the block, torch.onnx exports share one registry (see the module docstring)."""
    cls = _registry_class()
    if cls is None or getattr(cls.__dict__["from_torchlib"].__func__, "condense_shared", False):
        yield  # no such internal in this torch, or shared already (for the whole process)
        return
    original = cls.__dict__["from_torchlib"]
    cls.from_torchlib = sharing_from_torchlib(cls.from_torchlib)
    try:
        yield
    finally:
        cls.from_torchlib = original
