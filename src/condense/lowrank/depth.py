"""Depth reduction: remove whole residual blocks or transformer layers, chosen by measurement.

A block can go when the network stays valid without it. Candidates are found from the graph, by
no attribute name: the model is exported (`torch.export`, non-strict) on example inputs with
every module's first input and returned tensor marked, and a module is a candidate when its
returned tensor is an `add` one of whose operands is its own input (reached through identity-like
ops only: clone, alias, same-shape view, dropout) and the other is computed inside it, with the
input's shape and dtype kept. Between that add and the output, pointwise activations and norms are
allowed: post-activation ResNet blocks (`relu(x + f(x))`) and post-norm transformer layers (BERT:
`LayerNorm(x + f(x))`) have no pure identity path, yet removing them leaves a valid network: these
are the blocks Veit et al. 2016 and "ShortGPT" remove. The input may reach the final add through
earlier residual adds inside the module (a pre-norm layer: `h = x + attn(x); h + mlp(h)`; a
post-norm layer: `LN(LN(x + attn(x)) + mlp(..))`). The outermost such module is kept (a layer,
not its inner attention-residual sub-block), except a container whose input reaches its output
only through residual children (a stage, the whole encoder): its children are the candidates. A
module called more than once (shared weights) is never a candidate; a projection shortcut (a conv
on the skip path) makes a block a non-candidate.

Removing a block replaces it by a `SkippedBlock`, which takes whatever arguments the block was
called with and returns its first input in the structure the block returned (a tensor, or a tuple
whose first element is the hidden state, padded with None): the identity. Which blocks go is
measured, one-shot: each candidate is removed on its own and the metric re-measured; the ones
whose removal costs least go (block-drop sensitivity; Gromov et al. 2024 "The unreasonable
ineffectiveness of the deeper layers", Men et al. 2024 "ShortGPT"). A Hugging Face model whose
family is in the layout table (`hf_layers.LAYER_PATHS`: BERT family, DistilBERT, DeBERTa, GPT-2,
Llama / Qwen2 / Mistral, ViT) keeps its remaining layers in its config (layer count, per-layer
lists, `layer_idx` renumbered: its saved folder opens in transformers); other models record a
`drop_blocks` edit that `load()` replays. ALBERT (one shared layer group) is refused: `layers=k`.
"""
from __future__ import annotations

import copy
import inspect
import operator
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, InputFileError, did_you_mean
from condense.core.select import select_modules
from condense.lowrank.config import DepthConfig
from condense.models.edits import EDITS, record_edit

_PLAIN = (bool, int, float, str, type(None))


def _face(module: nn.Module, depth: int = 2) -> dict[str, Any]:
    """The plain attributes (flags, sizes, names) of `module` and, `depth` levels down, of its
    children: what third-party code reads off a layer it calls (`layers[0].self_attn.batch_first`)."""
    face = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"
            and (isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v)))}
    if depth > 0:
        for k, child in module._modules.items():
            if child is not None:
                face[k] = types.SimpleNamespace(**_face(child, depth - 1))
    return face


class SkippedBlock(nn.Identity):
    """A removed block: called like it (any positional / keyword arguments), returns its first
    input, as a tensor (`returns=0`) or as a tuple of `returns` entries `(hidden, None, ...)`.
    It keeps no weights, only the plain attributes of the block it replaces (`_face`)."""

    def __init__(self, returns: int = 0, arg: str | None = None, face: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.returns = int(returns)
        self.arg = arg
        self.__dict__["face"] = dict(face or {})

    @classmethod
    def replacing(cls, block: nn.Module, returns: int = 0) -> SkippedBlock:
        return cls(returns, _first_param(block), _face(block))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            face = self.__dict__.get("face") or {}
            if name in face:
                return face[name]
            raise

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if args:
            x = args[0]
        elif self.arg is not None and self.arg in kwargs:
            x = kwargs[self.arg]
        else:
            x = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            if x is None:
                raise TypeError("SkippedBlock: called without a tensor input")
        return x if self.returns == 0 else (x, *([None] * (self.returns - 1)))

    def extra_repr(self) -> str:
        return f"returns={'tensor' if self.returns == 0 else f'tuple of {self.returns}'}"


def _first_param(module: nn.Module) -> str | None:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    p = next((p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None)
    return p.name if p is not None else None


def _first_input(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor a block is called with first (its hidden state), as `SkippedBlock` picks it."""
    if args:
        return args[0] if isinstance(args[0], torch.Tensor) else None
    name = _first_param(module)
    if name in kwargs:
        return kwargs[name] if isinstance(kwargs[name], torch.Tensor) else None
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def _returns(out: Any) -> int | None:
    """0 for a tensor, n for a tuple / list of n entries led by a tensor, None otherwise."""
    if isinstance(out, torch.Tensor):
        return 0
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) and type(out) in (tuple, list):
        return len(out)
    return None


# ---- example inputs -------------------------------------------------------------------------

def _example(model: nn.Module, example_inputs: Any, data: Any = None) -> Any:
    if example_inputs is not None:
        return example_inputs
    if data is not None:
        from condense.data.loader import example_inputs as from_data

        return from_data(data, 2)
    from condense.prune.structured import example_tuple

    try:
        return example_tuple(model, None)
    except ConfigError:
        raise ConfigError(f"reduce_depth: finding the removable blocks of {type(model).__name__} runs it once; pass "
                          "example_inputs= (a tensor, a tuple, or a batch dict) or data=") from None


def _call_args(model: nn.Module, example: Any) -> tuple[tuple, dict[str, Any]]:
    """`example` as the (args, kwargs) the model is called with; a missing required argument of
    its forward is a ConfigError naming it."""
    from collections.abc import Mapping

    from condense.models.signature import model_inputs, signature_of

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


def _run(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    finally:
        model.train(was)


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
    args, kwargs = _call_args(model, example)
    names = [n for n, _ in model.named_modules()]
    mods = dict(model.named_modules())
    calls = dict.fromkeys(names, 0)
    returns: dict[str, int | None] = {}
    handles = []

    def pre(i: int, m: nn.Module, a: tuple, kw: dict) -> Any:
        calls[names[i]] += 1
        x = _first_input(m, a, kw)
        if x is None or calls[names[i]] > 1:
            return None
        if a:
            return (_mark(x, i, False), *a[1:]), kw
        key = next(k for k, v in kw.items() if v is x)
        return a, {**kw, key: _mark(x, i, False)}

    def post(i: int, m: nn.Module, a: tuple, kw: dict, out: Any) -> Any:
        r = _returns(out)
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


# ---- which blocks, and removing them ---------------------------------------------------------

def _hf_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """A Hugging Face model's list of transformer blocks where its family is in the layout table
    (`hf_layers.LAYER_PATHS`: BERT family, DistilBERT, DeBERTa, GPT-2, Llama / Qwen2 / Mistral,
    ViT): removing whole layers there patches its config (layer count, per-layer lists)."""
    lay = _hf_layout(model)
    if lay is None or lay.shared or lay.source != "table" or lay.count_field is None:
        return None
    name = next(n for n, m in model.named_modules() if m is lay.blocks)
    return name, lay.blocks


def _hf_layout(model: nn.Module) -> Any:
    hf = getattr(model, "hf", None)
    if hf is None:
        return None
    from condense.models.hf_layers import layer_layout

    try:
        return layer_layout(hf)
    except ConfigError:
        return None


def _candidates(model: nn.Module, targets: list[str] | None, ignore: list[str] | None,
                example: Callable[[], Any]) -> tuple[list[str], dict[str, int] | None]:
    hf = _hf_layers(model)
    returns: dict[str, int] | None = None
    lay = _hf_layout(model) if hf is None and targets is None else None
    if lay is not None and lay.shared:
        raise ConfigError(f"reduce_depth: {type(model.hf).__name__} ({lay.model_type}) runs one shared layer group "
                          f"{lay.total} times, so no layer can be removed on its own; make it shallower with "
                          "layers=k (build_model / student_from_teacher: the shared layer runs k times)")
    if targets is not None:
        names = list(select_modules(model, targets, field="targets"))
    elif hf is not None:
        names = [f"{hf[0]}.{i}" for i in range(len(hf[1]))]
    else:
        returns = discover_blocks(model, example())
        names = list(returns)
    if ignore:
        drop = set(select_modules(model, ignore, field="ignore"))
        names = [n for n in names if n not in drop]
    if not names:
        raise ConfigError(f"reduce_depth: {type(model).__name__} has no removable block (a module whose output adds "
                          "its own input, shape kept, or a transformer layer); name blocks with targets=")
    return names, returns


def droppable_blocks(model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None,
                     example_inputs: Any = None) -> list[str]:
    """Names of the blocks depth reduction may remove (module docstring), in model order.

    Found from the graph of the model run on `example_inputs` (default: zeros shaped from a
    zoo model's spec). `targets` replaces the default candidates by the modules it selects (each
    must map its input to an output of the same shape, checked when removed); `ignore` takes
    some away."""
    return _candidates(model, targets, ignore, lambda: _example(model, example_inputs))[0]


def _block_returns(model: nn.Module, names: list[str], example: Any) -> dict[str, int]:
    """Run `model` once: what each named block returns (0: a tensor, n: a tuple of n led by the
    hidden state); ConfigError for one that changes its input's shape or returns something else."""
    args, kwargs = _call_args(model, example)
    seen: dict[str, tuple[Any, Any]] = {}

    def hook(n: str, m: nn.Module, a: tuple, kw: dict, o: Any) -> None:
        seen.setdefault(n, (_first_input(m, a, kw), o))

    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, a, kw, o, n=n: hook(n, m, a, kw, o), with_kwargs=True) for n in names]
    try:
        _run(model, args, kwargs)
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, int] = {}
    for n in names:
        if n not in seen:
            raise ConfigError(f"reduce_depth: block {n!r} is not called when the model runs; only blocks in the "
                              "forward pass can be removed")
        x, o = seen[n]
        r = _returns(o)
        if r is None:
            raise ConfigError(f"reduce_depth: block {n!r} returns {type(o).__name__}; a removable block returns a "
                              "tensor or a tuple led by its hidden state")
        y = o if r == 0 else o[0]
        if x is None or tuple(x.shape) != tuple(y.shape):
            raise ConfigError(f"reduce_depth: block {n!r} changes the shape of its input; only blocks that map "
                              "their input to the same shape can be removed")
        out[n] = r
    return out


def _drop(model: nn.Module, names: list[str], returns: dict[str, int]) -> None:
    """Remove `names` from `model` in place (no edit recorded)."""
    hf = _hf_layers(model)
    if hf is not None and all(n.startswith(hf[0] + ".") and n[len(hf[0]) + 1:].isdigit() for n in names):
        from condense.models.hf import keep_layers

        gone = {int(n[len(hf[0]) + 1:]) for n in names}
        keep_layers(model.hf, [i for i in range(len(hf[1])) if i not in gone])
        return
    for n in names:
        model.set_submodule(n, SkippedBlock.replacing(model.get_submodule(n), returns.get(n, 0)))


def reduce_depth(model: nn.Module, config: DepthConfig | dict[str, Any] | None = None, data: Any = None, *,
                 eval_fn: Callable[[nn.Module], float] | None = None, example_inputs: Any = None) -> nn.Module:
    """Remove `config.drop` blocks (the least important, measured on `data`) or `config.blocks`;
    in place. Candidates are found by running the model on `example_inputs` (default: the first
    samples of `data`, or zeros shaped from a zoo model's spec). `eval_fn(model) -> float` (higher
    is better) replaces the default metric: accuracy on `data`, or for an encoder the mean cosine
    to the unreduced model. The report (candidates, metric with each removed, what went) is
    `model.condense_depth_report`."""
    cfg = DepthConfig.from_dict(config) if isinstance(config, dict) else (config or DepthConfig())
    cache: list[Any] = []

    def example() -> Any:
        if not cache:
            cache.append(_example(model, example_inputs, data))
        return cache[0]

    candidates, _ = _candidates(model, cfg.targets, cfg.ignore, example)
    hf = _hf_layers(model)
    hf_path = hf is not None and all(n.startswith(hf[0] + ".") and n[len(hf[0]) + 1:].isdigit() for n in candidates)
    if hf_path and getattr(model, "condense_edits", None):
        raise ConfigError("reduce_depth: this encoder already carries structural edits (pruned heads, factorized "
                          "layers) that name layers by index; remove layers first, then prune or factorize")
    report: dict[str, Any] = {"candidates": candidates}
    if cfg.blocks is not None:
        for b in cfg.blocks:
            if b not in candidates:
                raise ConfigError(f"reduce_depth: {b!r} is not a removable block{did_you_mean(b, candidates)}; "
                                  f"candidates: {', '.join(candidates)}")
    elif cfg.drop >= len(candidates):
        raise ConfigError(f"reduce_depth: drop={cfg.drop} would remove all {len(candidates)} candidate blocks "
                          f"({', '.join(candidates)})")
    elif eval_fn is None and data is None:
        raise ConfigError("reduce_depth: choosing blocks by importance measures a metric; pass data= "
                          "(held-out samples), eval_fn=, or name the blocks")
    returns = {} if hf_path else _block_returns(model, candidates, example())
    if cfg.blocks is not None:
        chosen = list(cfg.blocks)
    else:
        if eval_fn is None:
            from condense.data.loader import as_source
            from condense.data.views import subset
            from condense.lowrank.sensitivity import default_metric

            n = min(len(as_source(data)), cfg.eval_batches * cfg.batch_size)
            eval_fn = default_metric(model, subset(data, list(range(n))))
        report["baseline"] = float(eval_fn(model))
        scores = {}
        for name in candidates:
            trial = copy.deepcopy(model)
            _drop(trial, [name], returns)
            scores[name] = float(eval_fn(trial))
        report["metric_without"] = scores
        chosen = sorted(candidates, key=lambda n: (-scores[n], candidates.index(n)))[: cfg.drop]
    chosen = [n for n in candidates if n in chosen]  # model order
    _drop(model, chosen, returns)
    if not hf_path:
        record_edit(model, "drop_blocks", blocks=chosen, returns={n: returns.get(n, 0) for n in chosen})
    report["dropped"] = chosen
    model.condense_depth_report = report  # type: ignore[assignment]
    return model


def _replay_drop(model: nn.Module, blocks: list[str], returns: dict[str, int] | None = None) -> None:
    for name in blocks:
        try:
            block = model.get_submodule(name)
        except AttributeError:
            raise InputFileError(f"edit log: 'drop_blocks' names {name!r}, which this architecture does not have") from None
        model.set_submodule(name, SkippedBlock.replacing(block, (returns or {}).get(name, 0)))


EDITS.register("drop_blocks", _replay_drop)
