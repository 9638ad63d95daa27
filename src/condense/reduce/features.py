"""What the reducers look at: flattened raw inputs, or a frozen model's embeddings (via `FeatureTap`)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.core.taps import FeatureTap
from condense.data.loader import as_source, collect
from condense.models.signature import batch_size_of, batch_to, call_model, model_inputs


def flat_inputs(data: Any) -> torch.Tensor:
    """The inputs as an (N, D) float tensor (images are flattened). A lazy Dataset is read whole
    into memory here: for large image folders reduce on a model's embeddings instead."""
    x = collect(data)
    return x.detach().float().reshape(len(x), -1).cpu()


@torch.no_grad()
def embed(model: nn.Module, data: Any, layer: str = "flatten", batch_size: int = 512) -> torch.Tensor:
    """The output of module `layer` of `model` for every sample, as an (N, D) float tensor on CPU.

    The model runs in eval mode (BatchNorm statistics untouched) and its mode is restored after.
    In the zoo CNNs "flatten" is the pooled embedding right before the classifier.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"embeddings need a torch.nn.Module, got {type(model).__name__}")
    source = as_source(data)
    if len(source) == 0:
        raise ConfigError("embeddings: the data is empty")
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    was = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with FeatureTap(model, [layer], detach=True) as tap:
            for batch in source.batches(batch_size):
                inputs = model_inputs(model, batch)
                call_model(model, batch_to(inputs, device))
                out.append(tap[layer].float().reshape(batch_size_of(inputs), -1).cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def source_features(
    data: Any, on: str, model: nn.Module | None, layer: str, where: str, batch_size: int = 512
) -> torch.Tensor:
    """Flattened inputs (`on="inputs"`) or `model`'s embeddings at `layer` (`on="features"/"embeddings"`)."""
    if on == "inputs":
        return flat_inputs(data)
    if model is None:
        raise ConfigError(
            f"{where}: on={on!r} reads a model's embeddings at {layer!r}, but no model was given; "
            "pass model=<teacher> or set on: inputs"
        )
    return embed(model, data, layer, batch_size)
