"""Export: fp32 ONNX with an output-parity check; ONNX Runtime sessions."""
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
    "ExportParityError",
    "ExportResult",
    "export_onnx",
    "onnx_file_bytes",
    "onnx_session",
    "ort_run",
    "output_tensor",
]
