"""What factorization measures on calibration data: each layer's input covariance (for the
activation-aware SVD) and its input / output positions per sample (for exact MAC counts)."""
from __future__ import annotations

import dataclasses
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from condense.data.loader import as_source
from condense.lowrank.decompose import input_vectors
from condense.models.signature import batch_to, call_model, model_inputs


@dataclasses.dataclass
class LayerStats:
    """Per layer: `cov` = sum of z z^T over `count` sampled input vectors (float64, None when not
    collected); `hw_in` / `hw_out`: spatial size of a conv's input / output (Linear: tokens per
    sample in both); `sample`: the first batch's input (for timing the replacement)."""

    cov: Tensor | None = None
    count: int = 0
    hw_in: tuple[int, int] = (1, 1)
    hw_out: tuple[int, int] = (1, 1)
    sample: Tensor | None = None


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def collect_stats(model: nn.Module, layers: dict[str, tuple[nn.Module, str]], *, data: Any = None, example: Any = None,
                  covariance: bool, batches: int = 8, batch_size: int = 64, max_vectors: int = 4096,
                  seed: int = 0, mask_padding: bool = False) -> dict[str, LayerStats]:
    """Run `model` (eval, no grad) on `batches` calibration batches of `data` (or once on `example`
    inputs) with a hook on every layer; `layers` maps name -> (module, form). `mask_padding`: a
    (batch, tokens, features) input contributes only the tokens its batch's `attention_mask`
    marks real to the covariance."""
    stats = {name: LayerStats() for name in layers}
    current_mask: list[Tensor | None] = [None]  # the batch's attention mask, read by the hooks
    gen = torch.Generator().manual_seed(seed)
    hooks = []

    def hook(name: str, module: nn.Module, form: str):
        def fn(_m: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            x = args[0].detach()
            st = stats[name]
            if st.sample is None:
                st.sample = x[: min(len(x), batch_size)].clone()
                if x.dim() == 4:
                    st.hw_in, st.hw_out = (x.shape[2], x.shape[3]), (out.shape[2], out.shape[3])
                else:
                    tokens = max(1, x[..., 0].numel() // max(1, x.shape[0])) if x.dim() > 2 else 1
                    st.hw_in = st.hw_out = (tokens, 1)
            if covariance:
                mask = current_mask[0]
                if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                    x = x[mask.bool()]  # real tokens only: padding never reaches a pooled output
                z = input_vectors(module, form, x).double().cpu()
                if len(z) > max_vectors:
                    z = z[torch.randperm(len(z), generator=gen)[:max_vectors]]
                st.cov = z.T @ z if st.cov is None else st.cov + z.T @ z
                st.count += len(z)
        return fn

    for name, (module, form) in layers.items():
        hooks.append(module.register_forward_hook(hook(name, module, form)))
    was = model.training
    model.eval()
    device = _device(model)
    try:
        with torch.no_grad():
            if data is not None:
                for batch in islice(as_source(data).batches(batch_size, shuffle=True, seed=seed), batches):
                    inputs = batch_to(model_inputs(model, batch), device)
                    if mask_padding and isinstance(inputs, dict):
                        current_mask[0] = inputs.get("attention_mask")
                    call_model(model, inputs)
            else:
                if isinstance(example, tuple):
                    model(*(t.to(device) for t in example))
                else:
                    call_model(model, batch_to(example, device) if isinstance(example, dict) else example.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return stats
