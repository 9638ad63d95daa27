"""Forward-hook feature taps keyed by module name, so methods never edit model code."""
from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import torch
from torch import nn

from condense.core.errors import ConfigError, did_you_mean


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
