"""ExecuTorch `.pte` programs lowered to the XNNPACK backend, fp32 or int8, and their runtime.

fp32: torch.export -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` ->
`to_executorch()`. int8: the PT2E flow (`prepare_pt2e` with XNNPACK's symmetric per-channel
quantizer, calibration on condense's calibration samples, `convert_pt2e`), then the same lowering,
so XNNPACK runs int8 kernels (Jacob et al. 2018 integer arithmetic; the PT2E flow is PyTorch's
successor to eager-mode quantization). Programs take batch 1, the edge case the format is for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.export.pt2 import _args_kwargs, capture


def require() -> None:
    """Raise MissingExtraError when ExecuTorch is not installed."""
    from condense.export.formats import MissingExtraError

    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as e:
        raise MissingExtraError("executorch", "executorch", str(e)) from e


def export_executorch(
    model: nn.Module,
    example: Any,
    path: str | Path,
    *,
    precision: str = "fp32",
    calibration: list[Any] | None = None,
) -> Path:
    """Write an XNNPACK-lowered `.pte` of `model` at `path` (batch 1). int8 needs `calibration`:
    a list of batch-1 inputs shaped like `example`."""
    require()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision == "int8":
        if not calibration:
            raise ConfigError("executorch int8 export needs calibration samples (none given)")
        try:
            ep = _quantized_program(model, example, calibration)
        except (RuntimeError, IndexError, TypeError, ValueError, AssertionError) as e:
            raise RunError(f"executorch int8 (PT2E, XNNPACK quantizer) failed on {type(model).__name__}: "
                           f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}; "
                           "fp32 executorch or the onnx int8 path may work") from e
    else:
        ep = capture(model, example)
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    from condense.core.io import atomic_write_bytes

    return atomic_write_bytes(path, program.buffer)


def _quantized_program(model: nn.Module, example: Any, calibration: list[Any]) -> torch.export.ExportedProgram:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = capture(model, example).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for sample in calibration:
            a, kw = _args_kwargs(sample)
            prepared(*a, **kw)
    converted = convert_pt2e(prepared)
    a, kw = _args_kwargs(example)
    with torch.no_grad():
        return torch.export.export(converted, a, kw, strict=False)


class ExecuTorchRunner:
    """A loaded `.pte` program's forward method, called like a model on batch-1 inputs."""

    runtime = "executorch"

    def __init__(self, path: str | Path) -> None:
        require()
        from executorch.runtime import Runtime

        self.path = Path(path)
        self.method = Runtime.get().load_program(str(self.path)).load_method("forward")

    def __call__(self, example: Any) -> torch.Tensor:
        a, kw = _args_kwargs(example)
        out = self.method.execute([*a, *kw.values()])
        return out[0]

    @staticmethod
    def threads() -> int | None:
        try:
            from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

            return int(_threadpool_get_thread_count())
        except (ImportError, AttributeError):
            return None


__all__ = ["ExecuTorchRunner", "export_executorch", "require"]
