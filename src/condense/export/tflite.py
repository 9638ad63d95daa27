"""TFLite / LiteRT flatbuffers through `litert-torch` (formerly ai-edge-torch), and the LiteRT runtime.

fp32: `litert_torch.convert(model, (example,))`. int8 "static" (CNNs): the PT2E flow with
litert-torch's symmetric per-channel quantizer, calibrated on condense's samples, passed to
`convert` as its `quant_config`. int8 "dynamic" (Hugging Face transformers; see
`condense.export.formats.int8_scheme`): the AI Edge Quantizer's dynamic recipe, int8 weights per
channel (embedding tables included) and activations quantized per call. Programs take batch 1.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.core.io import atomic_path
from condense.core.noise import quiet_known_noise
from condense.export.common import MissingExtraError, int8_scheme
from condense.export.pt2 import args_kwargs, plain_layers


def require() -> None:
    quiet_known_noise()  # torchao's known-harmless import messages
    try:
        import litert_torch  # noqa: F401
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError as e:
        raise MissingExtraError("tflite", "tflite", str(e)) from e


def export_tflite(model: nn.Module, example: Any, path: str | Path, *, precision: str = "fp32",
                  calibration: list[Any] | None = None, scheme: str = "auto") -> Path:
    """Write `model` as a `.tflite` at `path` (batch 1). int8 `scheme` (see
    `condense.export.formats.int8_scheme`): "static" needs `calibration`, "dynamic" does not."""
    require()
    import litert_torch

    scheme = int8_scheme(model, scheme) if precision == "int8" else scheme
    model = plain_layers(model)
    args, kwargs = args_kwargs(example)
    options: dict[str, Any] = {}
    if precision == "int8" and scheme == "dynamic":
        # The AI Edge Quantizer's dynamic recipe: every weight (Linear and the embedding tables)
        # int8 per channel, activations quantized per call. litert-torch's PT2E dynamic mode
        # quantized the embedding table with a non-zero zero point, which LiteRT's
        # EMBEDDING_LOOKUP kernel refuses at load time.
        from litert_torch.generative.quantize import quant_recipes

        options["quant_config"] = quant_recipes.full_dynamic_recipe()
    elif precision == "int8":
        if not calibration:
            raise ConfigError("tflite int8 export (static scheme) needs calibration samples (none given)")
        from litert_torch.quantize.pt2e_quantizer import (
            PT2EQuantizer,
            get_symmetric_quantization_config,
        )
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        graph = torch.export.export(model, args, kwargs, strict=False).module()
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for sample in calibration:
                a, kw = args_kwargs(sample)
                prepared(*a, **kw)
        model = convert_pt2e(prepared, fold_quantize=False)
        options["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    edge = litert_torch.convert(model, args, kwargs or None, **options)
    with atomic_path(path) as tmp:
        edge.export(str(tmp))
    return Path(path)


class LiteRTRunner:
    """A `.tflite` file in the LiteRT interpreter, called like a model on batch-1 inputs."""

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        require()
        from ai_edge_litert.interpreter import Interpreter

        self.threads = threads or os.cpu_count() or 1
        self.interp = Interpreter(model_path=str(path), num_threads=self.threads)
        self.interp.allocate_tensors()
        self.inputs = self.interp.get_input_details()
        self.output = self.interp.get_output_details()[0]

    def __call__(self, example: Any) -> torch.Tensor:
        a, kw = args_kwargs(example)
        pairs = list(zip(self.inputs, [*a, *kw.values()], strict=False))
        by_name = {d["name"].removeprefix("serving_default_").split(":")[0]: d for d in self.inputs}
        if kw and not a and set(kw) <= set(by_name):  # named inputs ("serving_default_input_ids")
            pairs = [(by_name[k], v) for k, v in kw.items()]
        for detail, value in pairs:
            arr = value.detach().numpy()
            scale, zero = detail["quantization"]
            if detail["dtype"] != arr.dtype and not scale:  # e.g. int64 token ids -> LiteRT's int32
                arr = arr.astype(detail["dtype"])
            elif detail["dtype"] != arr.dtype:  # an int8 program with float input: quantize on its grid
                info = np.iinfo(detail["dtype"])
                arr = np.clip(np.round(arr / scale) + zero, info.min, info.max).astype(detail["dtype"])
            self.interp.set_tensor(detail["index"], arr)
        self.interp.invoke()
        out = self.interp.get_tensor(self.output["index"]).copy()
        if out.dtype != np.float32:  # integer output: back to float with its scale / zero point
            scale, zero = self.output["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return torch.from_numpy(out)
