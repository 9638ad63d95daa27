"""A Linear to every method: `nn.Linear` and Hugging Face's `Conv1D` (GPT-2, GPT-Neo's MLP, ...).

`transformers.pytorch_utils.Conv1D` is a Linear with its weight stored transposed: `weight` is
(in, out), `nf` = out and `nx` = in, and its forward is `addmm(bias, x.view(-1, in), weight)`.
It is not an `nn.Linear` subclass, so code that selects layers by `isinstance(m, nn.Linear)`
never sees it. These helpers let each method treat both alike without importing transformers:

- `is_conv1d` / `is_linear` / `linear_kinds()`: what counts (for `isinstance` tuples: the
  Conv1D class joins only once transformers has been imported, i.e. once a model could hold one);
- `linear_dims(m)`: (out, in); `linear_weight(m)`: the weight as (out, in) (a transposed view of
  a Conv1D's parameter: read it, do not install a parametrization through it);
- `as_linear(m)`: an equivalent `nn.Linear` whose weight is a transposed view of the Conv1D's
  (in, out) storage, so `F.linear` multiplies by the very same matrix and the outputs are
  bit-identical; `swap_conv1d(model, names)` puts such Linears in place of the named Conv1Ds.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from torch import nn

from condense.core.errors import ConfigError

_CONV1D_MODULE = "transformers.pytorch_utils"


def conv1d_class() -> type[nn.Module] | None:
    """transformers' Conv1D class when transformers is loaded, else None (never imports it)."""
    mod = sys.modules.get(_CONV1D_MODULE)
    cls = getattr(mod, "Conv1D", None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def is_conv1d(module: object) -> bool:
    """True for a transformers `Conv1D` (or a subclass of it): weight (in, out), `nf` out, `nx` in."""
    return any(c.__name__ == "Conv1D" and c.__module__ == _CONV1D_MODULE for c in type(module).__mro__)


def is_linear(module: object) -> bool:
    """An `nn.Linear` (any subclass) or a transformers `Conv1D`."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_kinds() -> tuple[type[nn.Module], ...]:
    """Types for `isinstance` / `select_layers`: nn.Linear, plus Conv1D once transformers is loaded."""
    cls = conv1d_class()
    return (nn.Linear,) if cls is None else (nn.Linear, cls)


def linear_type_names(model: nn.Module) -> tuple[str, ...]:
    """Type-name patterns (`condense.core.select`) for the model's Linear-like layers: "Linear",
    plus "Conv1D" when the model holds one (each name only where it matches something, so a default
    selection never fails on the name the model lacks; "Linear" when it has neither)."""
    mods = list(model.modules())
    names = (("Linear",) if any(isinstance(m, nn.Linear) for m in mods) else ()) + \
        (("Conv1D",) if any(is_conv1d(m) for m in mods) else ())
    return names or ("Linear",)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of an nn.Linear or a Conv1D."""
    if is_conv1d(module):
        return int(module.nf), int(module.nx)  # type: ignore[arg-type]
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    raise ConfigError(f"{type(module).__name__} is not a Linear layer")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in): a Linear's `weight`, a Conv1D's `weight.t()` (a view)."""
    w = module.weight
    return w.t() if is_conv1d(module) else w


def as_linear(module: nn.Module) -> nn.Linear:
    """An `nn.Linear` computing exactly what `module` (a Conv1D) computes.

    Its weight is a Parameter holding the transposed view of the Conv1D's (in, out) values (a copy
    of them, not shared with `module`): `F.linear` then multiplies by a contiguous (in, out) matrix
    as `addmm` did, so outputs are bit-identical. An nn.Linear is returned as it is.
    """
    if isinstance(module, nn.Linear):
        return module
    if not is_conv1d(module):
        raise ConfigError(f"{type(module).__name__} is not a Linear or a transformers Conv1D")
    w = module.weight.detach()
    out_f, in_f = linear_dims(module)
    bias = getattr(module, "bias", None)
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(w.clone().t(), requires_grad=module.weight.requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    lin.train(module.training)
    return lin


def swap_conv1d(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Replace the named Conv1D layers of `model` (all of them when `names` is None) by equivalent
    nn.Linear layers (`as_linear`), in place; returns the names swapped. A named module that is not
    a Conv1D is a ConfigError (an nn.Linear there is already what is wanted and is left alone)."""
    if names is None:
        names = [n for n, m in model.named_modules() if n and is_conv1d(m)]
    done = []
    for name in names:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"the model has no module {name!r}") from None
        if isinstance(m, nn.Linear):
            continue
        if not is_conv1d(m):
            raise ConfigError(f"{name!r} is a {type(m).__name__}, not a transformers Conv1D")
        model.set_submodule(name, as_linear(m))
        done.append(name)
    return done


__all__ = ["as_linear", "conv1d_class", "is_conv1d", "is_linear", "linear_dims", "linear_kinds", "linear_type_names",
           "linear_weight", "swap_conv1d"]
