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

This module chooses and removes blocks; the graph discovery is `lowrank.residual`, the removed
block (`SkippedBlock`) and the `drop_blocks` replay are `lowrank.skipped`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, did_you_mean
from condense.core.select import select_modules
from condense.data.loader import as_source
from condense.data.loader import example_inputs as from_data
from condense.data.views import subset
from condense.lowrank.config import DepthConfig
from condense.lowrank.residual import call_args, discover_blocks
from condense.lowrank.sensitivity import default_metric
from condense.lowrank.skipped import SkippedBlock, first_input, returns_of
from condense.lowrank.skipped import replay_drop as replay_drop  # importable from here as before
from condense.models.edits import attach_edit_report, edit_log, record_edit
from condense.models.hf import keep_layers
from condense.models.hf_layers import layer_layout
from condense.prune.structured import example_tuple

# ---- example inputs -------------------------------------------------------------------------

def _example(model: nn.Module, example_inputs: Any, data: Any = None) -> Any:
    if example_inputs is not None:
        return example_inputs
    if data is not None:
        return from_data(data, 2)
    try:
        return example_tuple(model, None)
    except ConfigError:
        raise ConfigError(f"reduce_depth: finding the removable blocks of {type(model).__name__} runs it once; pass "
                          "example_inputs= (a tensor, a tuple, or a batch dict) or data=") from None


def _run(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    finally:
        model.train(was)


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
    args, kwargs = call_args(model, example)
    seen: dict[str, tuple[Any, Any]] = {}

    def hook(n: str, m: nn.Module, a: tuple, kw: dict, o: Any) -> None:
        seen.setdefault(n, (first_input(m, a, kw), o))

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
        r = returns_of(o)
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
    if hf_path and edit_log(model):
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
    attach_edit_report(model, "depth", report)
    return model
