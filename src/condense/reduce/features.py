"""What the reducers look at: flattened raw inputs, or a frozen model's embeddings (via `FeatureTap`)."""
from __future__ import annotations

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.core.taps import FeatureTap
from condense.data.base import ArrayDataset, iterate_batches


def flat_inputs(data: ArrayDataset) -> torch.Tensor:
    """The inputs as an (N, D) float tensor (images are flattened)."""
    return data.inputs.detach().float().reshape(len(data), -1).cpu()


@torch.no_grad()
def embed(model: nn.Module, data: ArrayDataset, layer: str = "flatten", batch_size: int = 512) -> torch.Tensor:
    """The output of module `layer` of `model` for every sample, as an (N, D) float tensor on CPU.

    The model runs in eval mode (BatchNorm statistics untouched) and its mode is restored after.
    In the zoo CNNs "flatten" is the pooled embedding right before the classifier.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"embeddings need a torch.nn.Module, got {type(model).__name__}")
    if len(data) == 0:
        raise ConfigError("embeddings: the data is empty")
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    was = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with FeatureTap(model, [layer], detach=True) as tap:
            for batch in iterate_batches(data, batch_size):
                model(batch["input"].to(device))
                out.append(tap[layer].float().reshape(len(batch["input"]), -1).cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def source_features(
    data: ArrayDataset, on: str, model: nn.Module | None, layer: str, where: str, batch_size: int = 512
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
