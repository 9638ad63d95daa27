"""Finding residual blocks from the graph (`discover_blocks`): the model is exported with every
module's first input and returned tensor marked, and a module is a candidate when its output adds
its own input (see `lowrank.depth`). Also `call_args`: example inputs as the model's call."""
from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.lowrank.skipped import first_input, returns_of
from condense.models.signature import model_inputs, signature_of


def call_args(model: nn.Module, example: Any) -> tuple[tuple, dict[str, Any]]:
    """`example` as the (args, kwargs) the model is called with; a missing required argument of
    its forward is a ConfigError naming it."""
    from collections.abc import Mapping

    if isinstance(example, torch.Tensor):
        args, kwargs = (example,), {}
    elif isinstance(example, (tuple, list)):
        args, kwargs = tuple(example), {}
    elif isinstance(example, Mapping):
        try:
            inputs = model_inputs(model, example)
        except ConfigError:
            inputs = dict(example)
        args, kwargs = ((), inputs) if signature_of(model).keyword or set(example) != {"input"} else \
            (tuple(inputs.values()), {})
    else:
        raise ConfigError(f"reduce_depth: example inputs must be a tensor, a tuple or a dict, got {type(example).__name__}")
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return args, kwargs
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        params = list(sig.parameters.values())
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        given = set(kwargs) | set(positional[: len(args)])
        need = [p.name for p in params if p.default is p.empty and p.name not in given
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        where = f"reduce_depth: {type(model).__name__}.forward"
        if need:
            raise ConfigError(f"{where} needs argument {need[0]!r}, which the example inputs do not give; pass "
                              "example_inputs= with it (a dict keyed by argument name)") from None
        raise ConfigError(f"{where} cannot be called with the example inputs ({e}); pass example_inputs= "
                          "as it is called (a tensor, a tuple, or a dict keyed by argument name)") from None
    return args, kwargs



# ---- discovery from the exported graph -------------------------------------------------------

@torch.library.custom_op("condense_depth::mark", mutates_args=())
def _mark(x: torch.Tensor, idx: int, out: bool) -> torch.Tensor:
    """Marks module `idx`'s first input (`out=False`) or returned tensor in the exported graph."""
    return x.clone()


@_mark.register_fake
def _(x: torch.Tensor, idx: int, out: bool) -> torch.Tensor:
    return torch.empty_like(x)


_aten = torch.ops.aten
_IDENTITY = {_aten.clone.default, _aten.alias.default, _aten.detach.default, _aten.contiguous.default,
             _aten.dropout.default, _aten.lift_fresh_copy.default, _aten.view.default, _aten.reshape.default,
             _aten._unsafe_view.default, _aten.expand.default, _aten._to_copy.default, _aten.to.dtype,
             _aten.type_as.default, _aten.feature_dropout.default}
_POST = {_aten.relu.default, _aten.relu_.default, _aten.gelu.default, _aten.silu.default, _aten.silu_.default,
         _aten.hardtanh.default, _aten.hardtanh_.default, _aten.relu6.default, _aten.hardswish.default,
         _aten.hardswish_.default, _aten.leaky_relu.default, _aten.leaky_relu_.default, _aten.elu.default,
         _aten.mish.default, _aten.layer_norm.default, _aten.native_layer_norm.default, _aten.rms_norm.default,
         _aten.group_norm.default, _aten.native_group_norm.default, _aten.batch_norm.default,
         _aten._native_batch_norm_legit_no_training.default, _aten.instance_norm.default}
_ADD = {_aten.add.Tensor, _aten.add_.Tensor}


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _same_shape(a: Any, b: Any) -> bool:
    va, vb = _val(a), _val(b)
    return isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and tuple(va.shape) == tuple(vb.shape) \
        and va.dtype == vb.dtype


def _stream(node: Any, start: Any, path: list[tuple[str, Any]], dead: set[Any]) -> bool:
    """Whether `node` is `start` (a module's marked input) through identity-like ops, post-ops
    (activations, norms) and residual adds; `path` collects the markers and adds passed, `dead`
    the add operands already known not to reach `start`."""
    while True:
        if node is start:
            return True
        if not isinstance(node, torch.fx.Node) or node.op != "call_function":
            return False
        t = node.target
        if t is _mark_op:
            path.append(("out" if node.args[2] else "in", int(node.args[1])))
            node = node.args[0]
        elif t in _IDENTITY:
            if not _same_shape(node, node.args[0]):
                return False
            node = node.args[0]
        elif t in _POST:
            node = node.args[0]
        elif t is operator.getitem and node.args[1] == 0 and isinstance(node.args[0], torch.fx.Node) \
                and node.args[0].target in _POST:
            node = node.args[0].args[0]
        elif t in _ADD:
            a, b = node.args[:2]
            if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2 or not all(
                    isinstance(x, torch.fx.Node) and x.op == "call_function" for x in (a, b)) or a is b:
                return False
            for s in (a, b):
                sub = [*path, ("add", node)]
                if s not in dead and _same_shape(s, node) and _stream(s, start, sub, dead):
                    path[:] = sub
                    return True
                dead.add(s)
            return False
        else:
            return False


_mark_op = torch.ops.condense_depth.mark.default


def _own_add(path: list[tuple[str, Any]], residual: set[int], repeated: set[str]) -> bool:
    """Whether an add on `path` lies outside every residual child (opened by its output marker,
    closed by its input marker further along the path) and outside every module called more
    than once (a shared-weight block applied in a loop is not this module's own residual)."""
    open_: list[int] = []
    closes = {i for kind, i in path if kind == "in"}
    for kind, i in path:
        if kind == "out" and i in residual and i in closes:
            open_.append(i)
        elif kind == "in" and open_ and open_[-1] == i:
            open_.pop()
        elif kind == "add" and not open_:
            stack = (i.meta.get("nn_module_stack") or {}).values()
            if not any(isinstance(v, tuple) and v and v[0] in repeated for v in stack):
                return True
    return False


def discover_blocks(model: nn.Module, example: Any) -> dict[str, int]:
    """Residual blocks found in the exported graph (module docstring), in model order, each
    with what it returns (0: a tensor, n: a tuple of n)."""
    args, kwargs = call_args(model, example)
    names = [n for n, _ in model.named_modules()]
    mods = dict(model.named_modules())
    calls = dict.fromkeys(names, 0)
    returns: dict[str, int | None] = {}
    handles = []

    def pre(i: int, m: nn.Module, a: tuple, kw: dict) -> Any:
        calls[names[i]] += 1
        x = first_input(m, a, kw)
        if x is None or calls[names[i]] > 1:
            return None
        if a:
            return (_mark(x, i, False), *a[1:]), kw
        key = next(k for k, v in kw.items() if v is x)
        return a, {**kw, key: _mark(x, i, False)}

    def post(i: int, m: nn.Module, a: tuple, kw: dict, out: Any) -> Any:
        r = returns_of(out)
        returns[names[i]] = r
        if r is None or calls[names[i]] > 1:
            return None
        if r == 0:
            return _mark(out, i, True)
        return type(out)([_mark(out[0], i, True), *out[1:]])

    for i, n in enumerate(names):
        m = mods[n]
        handles.append(m.register_forward_pre_hook(lambda m, a, kw, i=i: pre(i, m, a, kw), with_kwargs=True))
        handles.append(m.register_forward_hook(lambda m, a, kw, o, i=i: post(i, m, a, kw, o), with_kwargs=True))
    was, fast = model.training, torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder-layer kernel hides its adds
    try:
        with torch.no_grad():
            ep = torch.export.export(model, args, kwargs, strict=False)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported the same way
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(f"reduce_depth: torch.export could not trace {type(model).__name__} to find its residual "
                          f"blocks ({type(e).__name__}: {msg}); name the blocks with targets=") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        torch.backends.mha.set_fastpath_enabled(fast)
    ins: dict[int, list[Any]] = {}
    outs: dict[int, list[Any]] = {}
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target is _mark_op:
            (outs if node.args[2] else ins).setdefault(int(node.args[1]), []).append(node)
    paths: dict[int, list[tuple[str, Any]]] = {}
    for i, n in enumerate(names):
        if not n or calls[n] != 1 or len(ins.get(i, ())) != 1 or len(outs.get(i, ())) != 1:
            continue
        start, end = ins[i][0], outs[i][0]
        path: list[tuple[str, Any]] = []
        if _same_shape(start, end) and _stream(end.args[0], start, path, set()) and any(k == "add" for k, _ in path):
            paths[i] = path
    residual = set(paths)
    repeated = {n for n, c in calls.items() if c > 1}
    own = {i for i in residual if _own_add(paths[i], residual - {i}, repeated)}

    def inside(i: int, j: int) -> bool:  # module j strictly inside module i
        return names[j].startswith(names[i] + ".")

    keep = [i for i in sorted(own) if not any(j != i and inside(j, i) for j in own)]
    return {names[i]: int(returns[names[i]] or 0) for i in keep}
