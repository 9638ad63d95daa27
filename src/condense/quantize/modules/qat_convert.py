"""Converting a trained QAT model into the integer-ready form every exporter takes.

`convert_qat(model, example)` folds each BatchNorm into the QAT layer before it and scales that
layer's per-channel weight step by |f| (exact for the symmetric per-channel grid, see `qat.py`),
then swaps every `QATWrapper` for the `QuantWrapper` static PTQ produces (mode "quantize"), or,
for weight-only QAT, for a packed `QuantizedLinear`. The swap is logged ("qat_convert") and
replayed by `load()`.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from condense.core.errors import ConfigError, RunError
from condense.models.edits import EDITS, record_edit
from condense.quantize.modules.fake_quant import QuantWrapper
from condense.quantize.modules.fold import BATCHNORMS, find_bn_pairs, fold_bn_into, trace_calls
from condense.quantize.modules.primitives import QuantSpec
from condense.quantize.modules.qat import QATWrapper, qat_wrappers
from condense.quantize.modules.weight_only import QuantizedLinear, QuantizedWeight


def _bn_pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """(wrapper, bn) pairs adjacent inside an nn.Sequential (its output feeds only the next child)."""
    pairs = []
    for pname, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        kids = list(parent.named_children())
        for (a, ma), (b, mb) in zip(kids, kids[1:], strict=False):
            if isinstance(ma, QATWrapper) and isinstance(mb, BATCHNORMS) and not isinstance(ma.module, nn.Linear):
                pre = f"{pname}." if pname else ""
                pairs.append((pre + a, pre + b))
    return pairs


def _bn_pairs_traced(model: nn.Module, example: Tensor) -> list[tuple[str, str]]:
    was = model.training
    model.eval()
    try:
        calls, _ = trace_calls(model, example, leaf_types=(QATWrapper,))
    finally:
        model.train(was)
    # find_bn_pairs only knows plain layers: present each wrapper call as its float layer.
    for c in calls:
        if isinstance(c.module, QATWrapper):
            c.module = c.module.module
    inner = {n for n, m in model.named_modules() if isinstance(m, QATWrapper)}
    return [(a, b) for a, b in find_bn_pairs([c for c in calls if not _inside(c.name, inner)]) if a in inner]


def _inside(name: str, wrappers: set[str]) -> bool:
    return any(name.startswith(w + ".") for w in wrappers)


def _act_spec(bits: int, signed: bool) -> QuantSpec:
    if signed:
        return QuantSpec(bits=bits, symmetric=True, per_channel=False, signed=True)
    return QuantSpec(bits=bits, symmetric=False, per_channel=False, signed=False)


def _make_quant_wrapper(layer: nn.Module, spec: dict[str, Any]) -> QuantWrapper:
    w = QuantWrapper(
        layer,
        QuantSpec.weight(spec["bits"], per_channel=spec["per_channel"]),
        _act_spec(spec["act_bits"], spec["act_signed"]),
    )
    w.set_mode("quantize")
    return w


@torch.no_grad()
def convert_qat(model: nn.Module, example: Tensor | None = None) -> nn.Module:
    """Freeze a QAT model into fixed-scale `QuantWrapper` layers with BatchNorm folded (a copy).

    `example` (one input batch) lets a traced forward pass find every BN that directly follows a
    wrapped conv; without it only conv -> BN pairs adjacent in an `nn.Sequential` are folded and
    any other BatchNorm is left in float (warned). Weight-only QAT (no activation quantizers)
    converts Linear layers to packed `QuantizedLinear` (one float32 step per output row) and bakes
    the fake-quantized weights of convolutions into float layers (no packed conv form).
    """
    wrappers = qat_wrappers(model)
    if not wrappers:
        raise ConfigError("convert_qat: the model holds no QAT layers (run prepare_qat first)")
    for n, w in wrappers.items():
        for fq in (w.input_fq, w.weight_fq):
            if fq is not None and not bool(fq.initialized):
                raise RunError(f"convert_qat: layer {n!r} never ran, so its step sizes are not initialised")
    was_training = model.training
    model = copy.deepcopy(model).eval()
    wrappers = qat_wrappers(model)
    pairs = _bn_pairs_traced(model, example) if example is not None else _bn_pairs_sequential(model)
    folded_bns = {b for _, b in pairs}
    others = [n for n, m in model.named_modules() if isinstance(m, BATCHNORMS) and n not in folded_bns]
    if others:
        hint = "" if example is not None else " (pass `example` to find non-Sequential pairs)"
        warnings.warn(f"convert_qat: BatchNorm left unfolded, in float: {', '.join(others)}{hint}", stacklevel=2)

    for wname, bn_name in pairs:
        w, bn = wrappers[wname], model.get_submodule(bn_name)
        f = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) * torch.rsqrt(
            bn.running_var + bn.eps
        )
        fq = w.weight_fq
        fq.scale.data = fq.scale.data.abs() * (f.abs() if fq.per_channel else f.abs().mean())
        if not fq.per_channel:
            warnings.warn(f"convert_qat: {wname} has a per-tensor weight step; BN folding is approximate", stacklevel=2)
        fold_bn_into(w.module, bn)
        model.set_submodule(bn_name, nn.Identity())
    if pairs:
        record_edit(model, "fold_bn", pairs=[[f"{a}.module", b] for a, b in pairs])

    layers: dict[str, dict[str, Any]] = {}
    for name, w in wrappers.items():
        spec = {**w.spec(), "act_signed": None if w.input_fq is None else bool(w.input_fq.signed)}
        if w.input_fq is None:
            new = _weight_only_form(w, name)
            spec["weight_only"] = new.spec() if hasattr(new, "spec") else None
        else:
            new = _make_quant_wrapper(w.module, spec)
            new.weight_fq.scale.copy_(w.weight_fq.scale.detach().abs().reshape(new.weight_fq.scale.shape))
            new.input_fq.scale.copy_(w.input_fq.scale.detach().abs().reshape(new.input_fq.scale.shape))
            new.weight_fq.zero_point.zero_()
            new.input_fq.zero_point.zero_()
        model.set_submodule(name, new)
        layers[name] = spec
    record_edit(model, "qat_convert", layers=layers)
    model.train(was_training)
    return model


def _weight_only_form(w: QATWrapper, name: str) -> nn.Module:
    """Weight-only QAT layer -> packed QuantizedLinear (Linear) or float layer with Q(W) (conv)."""
    layer, fq = w.module, w.weight_fq
    s = fq.scale.detach().abs().clamp_min(1e-8)
    s_rows = s.reshape(-1, 1) if fq.per_channel else s.expand(layer.weight.shape[0]).reshape(-1, 1)
    if isinstance(layer, nn.Linear):
        q = torch.clamp(torch.round(layer.weight / s_rows), -fq.qn, fq.qp).to(torch.int16)
        qw = QuantizedWeight(q, s_rows.float(), None, fq.bits, 0, True)
        return QuantizedLinear.from_quantized(layer, qw)
    warnings.warn(f"convert_qat: {name} ({type(layer).__name__}) has no packed weight-only form; "
                  "its fake-quantized weights are stored in float", stacklevel=3)
    layer.weight.copy_(fq(layer.weight).detach())
    return layer


def _replay_qat_convert(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    for name, spec in layers.items():
        m = model.get_submodule(name)
        layer = m.module if isinstance(m, QATWrapper) else m
        if spec["act_signed"] is None:
            wo = spec.get("weight_only")
            if wo is not None:
                wo = dict(wo)
                new: nn.Module = QuantizedLinear(
                    wo.pop("in_features"), wo.pop("out_features"), wo.pop("bias"), **wo
                )
            else:
                new = layer
        else:
            new = _make_quant_wrapper(layer, spec)
        model.set_submodule(name, new)


EDITS.register("qat_convert", _replay_qat_convert)
