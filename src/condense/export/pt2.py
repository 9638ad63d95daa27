"""torch.export capture shared by the edge formats, and the `pt2` format itself.

`capture(model, example)` returns a `torch.export.ExportedProgram` of the model in eval mode.
Models carrying condense's fake-quant wrappers are first turned back into plain layers whose
weights sit on their int8 grid (`plain_layers`), so every format sees the same weights the int8
simulation used. When torch.export cannot trace the model, `ExportTraceError` names the op it
stopped at and the deepest submodule that fails on its own (found by re-exporting each submodule
on the inputs it received in an eager run).

`export_pt2` saves the program with `torch.export.save`; `formats.export` reloads it with
`torch.export.load` and checks it against PyTorch before moving it into place.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.errors import RunError
from condense.quantize.modules.fake_quant import QuantWrapper

MAX_LOCALISE_TRIES = 200


class ExportTraceError(RunError):
    """torch.export could not trace the model (names the op and the module)."""


def plain_layers(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with every QuantWrapper replaced by its float layer holding
    the fake-quantized weight and bias (plus the absorbed ReLU / ReLU6); other models are copied."""
    model = copy.deepcopy(model).eval()
    wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantWrapper)]
    for name, w in wrappers:
        layer = copy.deepcopy(w.module)
        if w.mode == "quantize":
            with torch.no_grad():
                layer.weight.copy_(w.quantized_weight())
                qb = w.quantized_bias()
                if qb is not None:
                    layer.bias.copy_(qb)
        new: nn.Module = layer
        if w.act == "relu":
            new = nn.Sequential(layer, nn.ReLU())
        elif w.act == "relu6":
            new = nn.Sequential(layer, nn.ReLU6())
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def args_kwargs(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    return (example,), {}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def capture(model: nn.Module, example: Any, *, dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """torch.export the model (eval mode, fake-quant wrappers made plain) on `example`.

    `dynamic_batch` marks dimension 0 of every tensor input as dynamic (1..1024). Raises
    ExportTraceError naming the op and the deepest failing submodule when tracing fails.
    """
    model = plain_layers(model)
    args, kwargs = args_kwargs(example)
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dynamic = (tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args) if args
                   else {k: ({0: batch} if isinstance(v, torch.Tensor) else None) for k, v in kwargs.items()})
    quiet = [logging.getLogger(n) for n in ("torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic, strict=False)
    except Exception as e:  # torch.export raises many internal types (Unsupported, UserError, ...)
        where = _failing_module(model, args, kwargs)
        raise ExportTraceError(
            f"torch.export cannot trace {type(model).__name__}: {_first_line(e)}"
            + (f" (first failing submodule: {where})" if where else "")
        ) from e
    finally:
        for lg, lvl in zip(quiet, levels, strict=False):
            lg.setLevel(lvl)


def _failing_module(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The deepest submodule that torch.export also fails on, tried on the inputs it got eagerly."""
    calls: list[tuple[str, nn.Module, tuple[Any, ...], dict[str, Any]]] = []
    seen: set[str] = set()

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, a: tuple[Any, ...], kw: dict[str, Any], _out: Any) -> None:
            if name not in seen:
                seen.add(name)
                calls.append((name, mod, a, kw))
        return fn

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception:  # the eager run fails too: nothing more precise to say
        return None
    finally:
        for h in handles:
            h.remove()
    # forward hooks fire after the children's, so the first failure in call order is the deepest
    for name, mod, a, kw in calls[:MAX_LOCALISE_TRIES]:
        try:
            with torch.no_grad():
                torch.export.export(mod, a, kw, strict=False)
        except Exception as e:
            return f"{name} ({type(mod).__name__}): {_first_line(e)}"
    return None


def export_pt2(model: nn.Module, example: Any, path: str | Path) -> Path:
    """Capture with a dynamic batch (a static one if the model needs it) and save to `path` (.pt2;
    `formats.export` writes into a temporary folder and moves the file in after its check)."""
    # a batch-1 example would be specialised to 1 (torch.export's 0/1 rule): capture on two copies
    args, kwargs = args_kwargs(example)
    two = [torch.cat([a, a]) if isinstance(a, torch.Tensor) else a for a in args]
    example2 = ({k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                if kwargs else tuple(two))
    try:
        ep = capture(model, example2, dynamic_batch=True)
    except ExportTraceError:
        ep = capture(model, example, dynamic_batch=False)
    path = Path(path)
    torch.export.save(ep, str(path))
    return path
