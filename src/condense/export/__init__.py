"""Export: `export(model, example, path, format=...)` for onnx / pt2 / executorch / tflite, each
checked against PyTorch in its runtime; fp32 ONNX with an output-parity check; ONNX Runtime sessions."""
from condense.export.formats import (
    FORMATS,
    DeployResult,
    MissingExtraError,
    deploy_precision,
    export,
    load_runner,
)
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
