"""The old import paths of the modules issue 28 moved into `quantize/modules/` and `quantize/graph/`.

`condense.quantize.ptq`, `condense.quantize.onnx_int8`, ... keep working for code, docs, saved
pickles and recipes written before the move: a finder on `sys.meta_path` (installed when this
module is imported, first thing in `condense.quantize/__init__.py`, which Python runs before any
submodule of the package) answers an
old name with the moved module itself, the same object, so `import`, `from ... import`, pickle's
class lookup and monkeypatching all act on the one real module. Nothing is imported until an old
name is asked for. `condense.quantize.<old>` read as an attribute works the same way
(`module_getattr`, the package's `__getattr__`).

Why not shim files: a shim (`from condense.quantize.modules.ptq import *`) is a second module
object, so private names are missing, a monkeypatched name would not reach the real module, and
the flat package would keep 20 files that hold nothing.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

#: old module name under condense.quantize -> the module's full name now
MOVED: dict[str, str] = {
    **{m: f"condense.quantize.modules.{m}" for m in (
        "fake_quant", "fold", "gptq", "groups", "lsq", "mixed", "observers", "packing",
        "primitives", "ptq", "qat", "qat_convert", "qat_fit", "weight_only")},
    **{m: f"condense.quantize.graph.{m}" for m in ("emulate", "onnx_int8", "onnx_smooth", "qdq_graph", "transformer_graph")},
    # the calibration reader is data handling that pruning reads too: it lives with the data
    "calibration": "condense.data.calibration",
}
_PREFIX = "condense.quantize."


def new_name(old: str) -> str | None:
    """`condense.quantize.<old>` -> the module's name now (None: not a moved module)."""
    return MOVED.get(old.removeprefix(_PREFIX)) if old.startswith(_PREFIX) else None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)  # the moved module itself
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the old name's spec; the module keeps its own


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Answer the old names from now on (idempotent)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())


def module_getattr(name: str) -> ModuleType:
    """`condense.quantize.<old>` as an attribute: the moved module (the package's `__getattr__`)."""
    if name in MOVED:
        return importlib.import_module(_PREFIX + name)
    raise AttributeError(f"module 'condense.quantize' has no attribute {name!r}")


install()
