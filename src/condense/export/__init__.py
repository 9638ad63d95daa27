"""Export: `export(model, example, path, format=...)` for onnx / pt2 / executorch / tflite, each
checked against PyTorch in its runtime; fp32 ONNX with an output-parity check; ONNX Runtime sessions.

The names below load on first use (PEP 562), so that `import condense.export.onnx` -- which the
training, distillation, pruning and evaluation modules do for `output_tensor` and ORT sessions --
does not import `formats`, the one module here that imports `condense.quantize` (int8 deployment):
the packages below quantize reach the ONNX helpers without pulling quantization in, and no
import circle runs through this package.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("FORMATS", "DeployResult", "deploy_precision", "export", "load_runner"), "condense.export.formats"),
    "MissingExtraError": "condense.export.common",
    **dict.fromkeys(("ExportParityError", "ExportResult", "export_onnx", "onnx_file_bytes", "onnx_session", "ort_run",
                     "output_tensor"), "condense.export.onnx"),
}

if TYPE_CHECKING:  # what type checkers and editors see
    from condense.export.common import MissingExtraError
    from condense.export.formats import FORMATS, DeployResult, deploy_precision, export, load_runner
    from condense.export.onnx import (
        ExportParityError,
        ExportResult,
        export_onnx,
        onnx_file_bytes,
        onnx_session,
        ort_run,
        output_tensor,
    )

__all__ = [
    "FORMATS",
    "DeployResult",
    "MissingExtraError",
    "deploy_precision",
    "export",
    "load_runner",
    "ExportParityError",
    "ExportResult",
    "export_onnx",
    "onnx_file_bytes",
    "onnx_session",
    "ort_run",
    "output_tensor",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # a submodule not imported yet is found by the import system after this
        raise AttributeError(f"module 'condense.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
