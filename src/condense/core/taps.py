"""Forward-hook feature taps keyed by module name, so methods never edit model code."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from types import TracebackType

import torch
import torch.utils.flop_counter
from torch import nn

from condense.core.errors import ConfigError, did_you_mean


@contextlib.contextmanager
def fused_fastpath_off() -> Iterator[None]:
    """Turn off torch's fused eval-mode fast path (`nn.TransformerEncoderLayer` /
    `nn.MultiheadAttention` -> `torch._transformer_encoder_layer_fwd` / `_native_multi_head_attention`)
    for the block, so the model runs module by module: hooks fire and `FlopCounterMode` sees every
    matmul (the fused kernels have no flop formula). Outputs are the same up to float rounding."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


@contextlib.contextmanager
def flop_counter() -> Iterator[torch.utils.flop_counter.FlopCounterMode]:
    """A `torch.utils.flop_counter.FlopCounterMode` that sees through what it would miss: torch's
    fused Transformer fast path is off (`fused_fastpath_off`) and the CPU flash-attention kernel that
    eval-mode `F.scaled_dot_product_attention` picks (no flop formula in torch) is counted like the
    other attention kernels (2 flops per multiply-add of QK^T and of attn @ V)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_flash_attention_flops
    with fused_fastpath_off(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        yield counter


class FeatureTap:
    """Capture the outputs of named submodules during forward passes.

    >>> with FeatureTap(model, ["layer1", "layer2"]) as tap:
    ...     model(x)
    ...     f1 = tap["layer1"]

    Names are exact qualified module names (as in `model.named_modules()`); an unknown name is a
    ConfigError listing close names. Outputs are kept with their autograd graph (detach them
    yourself for frozen teachers, or pass `detach=True`). Tuple outputs keep their first tensor.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, detach: bool = False) -> None:
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules or not name:
                raise ConfigError(f"feature tap: no module named {name!r}{did_you_mean(name, [n for n in modules if n])}")
        self.names = list(names)
        self.detach = detach
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            if hasattr(output, "last_hidden_state"):
                output = output.last_hidden_state
            self.features[name] = output.detach() if self.detach else output

        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.features:
            raise KeyError(f"feature {name!r} was not produced by the last forward pass")
        return self.features[name]

    def clear(self) -> None:
        self.features.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()
