"""Which attention heads and FFN neurons of a BERT-family encoder matter: importance scores.

Scores come from gates: a forward hook multiplies each head's slice of the self-attention
output (the per-head context vectors, before `attention.output.dense`) and each FFN neuron's
activation (after `intermediate.dense` + GELU) by a gate that is 1 while scoring, so the model
computes exactly what it did. (transformers 5 dropped `head_mask`; the hooks stand in for it.)

- "gradient": Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?"
  (NeurIPS): I_h = E_x |dL(x)/d gate_h|, one gate per example and head (so the absolute value is
  taken per example, as in the paper), the same estimator for FFN neurons.
- "taylor": the first-order Taylor term |a . dL/da| per token (Molchanov et al. 2017, "Pruning
  Convolutional Neural Networks for Resource Efficient Inference", ICLR), averaged over the
  real (unpadded) tokens; for a head, a . dL/da is summed over the head's dimensions first.
- "activation": mean |a| over real tokens (no gradients).
- "weight": L2 norm of the weights a head or neuron owns (its query/key/value rows and output
  columns; a neuron's `intermediate.dense` row and `output.dense` column). No data.

Head scores are normalised per layer to unit L2 norm, as Michel et al. do, so one global ranking
compares heads across layers.

The loss (`calibration_loss`): classifiers use cross-entropy on `target` (Michel et al.'s task
loss; the unpruned model's argmax when the batch is unlabelled). An encoder (sentence embedding,
hidden states) has no task loss, and the natural one, a distance to the unpruned output (MSE,
1 - cosine), is useless here: at gate = 1 the output *is* the unpruned output, the distance is
at its minimum and its gradient is exactly zero for every head. What we want is the size of the
output change a head's removal causes, ||J_h|| with J_h = d f(x) / d gate_h (the first-order
estimate of the distance after removal). With L = r . f(x) for a fresh standard-normal r per
example, E_r |dL/d gate_h| = sqrt(2/pi) ||J_h|| (a random projection of the Jacobian, as in
Hutchinson's estimator), so the "gradient" and "taylor" estimators above measure exactly that.
On all-MiniLM-L6-v2 (30 % of heads + 25 % of FFN neurons removed, no retraining) this kept a
held-out cosine to the unpruned embeddings of 0.86, against 0.79 with an in-batch contrastive
loss, 0.85 with "activation" and 0.68 with "weight".
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.models.hf import HFModel
from condense.models.signature import batch_to, call_model, model_inputs

#: transformers model types whose blocks have the BERT layout handled here.
SUPPORTED = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


@dataclasses.dataclass
class Block:
    """One transformer block's prunable parts (views into the model, not copies)."""

    index: int
    attention: nn.Module  # BertAttention: .self (BertSelfAttention) and .output (BertSelfOutput)
    intermediate: nn.Module  # BertIntermediate: .dense + activation
    output: nn.Module  # BertOutput: .dense

    @property
    def self_attn(self) -> nn.Module:
        return self.attention.self

    @property
    def heads(self) -> int:
        return int(self.self_attn.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(self.self_attn.attention_head_size)

    @property
    def neurons(self) -> int:
        return int(self.intermediate.dense.out_features)

    @property
    def name(self) -> str:
        return f"layer {self.index} (encoder.layer.{self.index})"


def _hf_of(model: nn.Module) -> nn.Module:
    if not isinstance(model, HFModel):
        raise ConfigError(f"transformer pruning needs a Hugging Face encoder built with build_model('hf:<folder>'); "
                          f"got {type(model).__name__} (use method 'channel' for other models)")
    return model.hf


def blocks_of(model: nn.Module) -> list[Block]:
    """The BERT-layout blocks of an hf: model; ConfigError naming the class when it has none."""
    hf = _hf_of(model)
    cfg = hf.config
    kind = f"{type(hf).__name__} (model_type {getattr(cfg, 'model_type', '?')!r})"
    base = getattr(hf, "base_model", hf)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    out: list[Block] = []
    for i, layer in enumerate(layers if isinstance(layers, nn.ModuleList) else []):
        attn, inter, outp = (getattr(layer, n, None) for n in ("attention", "intermediate", "output"))
        sa = getattr(attn, "self", None)
        ok = (all(isinstance(getattr(sa, n, None), nn.Linear) for n in ("query", "key", "value"))
              and all(hasattr(sa, n) for n in ("num_attention_heads", "attention_head_size", "all_head_size"))
              and isinstance(getattr(getattr(attn, "output", None), "dense", None), nn.Linear)
              and isinstance(getattr(inter, "dense", None), nn.Linear)
              and isinstance(getattr(outp, "dense", None), nn.Linear))
        if not ok:
            out = []
            break
        out.append(Block(i, attn, inter, outp))
    if not out:
        raise ConfigError(f"transformer pruning does not support {kind}: it needs BERT-style blocks "
                          "(encoder.layer[i].attention.self.query/key/value, attention.output.dense, "
                          f"intermediate.dense, output.dense), as in model types {', '.join(SUPPORTED)}")
    if getattr(cfg, "add_cross_attention", False) or getattr(cfg, "is_decoder", False):
        raise ConfigError(f"transformer pruning supports encoders; {kind} is a decoder or has cross-attention")
    return out


# ----------------------------------------------------------------------------- gates


class Gates:
    """Forward hooks multiplying head contexts and FFN activations by gates (see module docstring).

    `fixed` maps ("head" | "ffn", layer) to a constant gate vector (e.g. zeros for removed
    heads); otherwise, with `track=True`, every forward makes fresh per-example gates of ones
    that require grad (`self.gates`) and keeps the gated outputs with their gradient (`self.outs`).
    """

    def __init__(self, blocks: Sequence[Block], heads: bool, ffn: bool, *, track: bool = False,
                 fixed: Mapping[tuple[str, int], torch.Tensor] | None = None) -> None:
        self.track = track
        self.fixed = dict(fixed or {})
        self.gates: dict[tuple[str, int], torch.Tensor] = {}
        self.outs: dict[tuple[str, int], torch.Tensor] = {}
        self.handles = []
        for b in blocks:
            if heads:
                self.handles.append(b.self_attn.register_forward_hook(self._hook(("head", b.index), b.head_dim)))
            if ffn:
                self.handles.append(b.intermediate.register_forward_hook(self._hook(("ffn", b.index), 1)))

    def _hook(self, key: tuple[str, int], width: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            y = output[0] if isinstance(output, tuple) else output
            n = y.shape[-1] // width
            if key in self.fixed:
                gate = self.fixed[key].to(y).expand(y.shape[0], n)
            elif self.track:
                gate = torch.ones(y.shape[0], n, dtype=y.dtype, device=y.device, requires_grad=True)
                self.gates[key] = gate
            else:
                return output
            g = gate.repeat_interleave(width, dim=1)  # (B, n * width)
            y = y * g.view(g.shape[0], *([1] * (y.dim() - 2)), g.shape[1])
            if self.track:
                if y.requires_grad:
                    y.retain_grad()
                self.outs[key] = y
            return (y, *output[1:]) if isinstance(output, tuple) else y

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


@contextlib.contextmanager
def masked(model: nn.Module, heads: Mapping[int, Iterable[int]] | None = None,
           neurons: Mapping[int, Iterable[int]] | None = None) -> Iterator[nn.Module]:
    """Inside the block, `model` computes with the given heads / FFN neurons zeroed (layer index
    -> positions): what removing them physically must reproduce exactly."""
    blocks = {b.index: b for b in blocks_of(model)}
    fixed: dict[tuple[str, int], torch.Tensor] = {}
    for kind, spec in (("head", heads or {}), ("ffn", neurons or {})):
        for layer, pos in spec.items():
            b = blocks[int(layer)]
            gate = torch.ones(b.heads if kind == "head" else b.neurons)
            gate[list(pos)] = 0.0
            fixed[(kind, int(layer))] = gate
    gates = Gates(list(blocks.values()), bool(heads), bool(neurons), fixed=fixed)
    try:
        yield model
    finally:
        gates.close()


# ----------------------------------------------------------------------------- loss


def calibration_loss(model: nn.Module, out: torch.Tensor, batch: Mapping[str, Any],
                     generator: torch.Generator) -> torch.Tensor:
    """The loss whose gate gradients score heads / neurons, summed over examples.

    Classifiers: cross-entropy on `target` (the unpruned argmax when the batch has none).
    Encoders: `sum(r * f(x))` with a fresh standard-normal `r` per example (padding tokens
    excluded), so that E|d(r . f)/d gate| = sqrt(2/pi) E||d f / d gate||: the size of the change
    of the output that removing the head causes, to first order (see module docstring).
    """
    if getattr(model, "task", None) == "sequence-classification":
        target = batch.get("target")
        target = out.detach().argmax(-1) if target is None else target.to(out.device).long()
        return F.cross_entropy(out.float(), target, reduction="sum")
    r = torch.randn(out.shape, generator=generator).to(out)
    if out.dim() == 3 and "attention_mask" in batch:
        r = r * batch["attention_mask"].to(out).unsqueeze(-1)
    return (out * r).sum()


# ----------------------------------------------------------------------------- scores


def weight_scores(blocks: Sequence[Block]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """({layer: head scores}, {layer: neuron scores}) from the L2 norm of the weights each owns."""
    heads, neurons = {}, {}
    with torch.no_grad():
        for b in blocks:
            sa, d = b.self_attn, b.head_dim
            rows = sum(getattr(sa, n).weight.float().pow(2).sum(1) for n in ("query", "key", "value"))
            cols = b.attention.output.dense.weight.float().pow(2).sum(0)
            heads[b.index] = (rows + cols).view(b.heads, d).sum(1).sqrt()
            neurons[b.index] = (b.intermediate.dense.weight.float().pow(2).sum(1)
                                + b.output.dense.weight.float().pow(2).sum(0)).sqrt()
    return heads, neurons


def _token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, n) -> per-example means over real tokens (B, n)."""
    m = mask.to(x).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def data_scores(model: nn.Module, blocks: Sequence[Block], batches: Iterable[Mapping[str, Any]], importance: str,
                heads: bool = True, ffn: bool = True, seed: int = 0) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Head and neuron scores over calibration `batches` ("gradient" | "taylor" | "activation").

    The model runs in eval mode (no dropout) with its parameters' gradients off (only the gates
    and activations need them); modes and flags are restored after.
    """
    if importance not in ("gradient", "taylor", "activation"):
        raise ConfigError(f"unknown importance {importance!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sums: dict[tuple[str, int], torch.Tensor] = {}
    by_index = {b.index: b for b in blocks}
    seen = 0
    generator = torch.Generator().manual_seed(seed)
    flags = {p: p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    gates = Gates(blocks, heads, ffn, track=True)
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for batch in batches:
            inputs = batch_to(model_inputs(model, batch), device)
            mask = inputs.get("attention_mask")
            with torch.set_grad_enabled(importance != "activation"):
                out = call_model(model, inputs)
                if importance != "activation":
                    calibration_loss(model, out, {**batch, **inputs}, generator).backward()
            for key, y in gates.outs.items():
                width = by_index[key[1]].head_dim if key[0] == "head" else 1
                a = y.detach()
                real = torch.ones(a.shape[:2], device=a.device) if mask is None else mask
                if importance == "gradient":
                    s = gates.gates[key].grad.abs()
                elif importance == "taylor":
                    s = _token_mean((a * y.grad).unflatten(-1, (-1, width)).sum(-1).abs(), real)
                else:
                    s = _token_mean(a.abs().unflatten(-1, (-1, width)).mean(-1), real)
                sums[key] = sums.get(key, 0) + s.sum(0).float().cpu()
            seen += int(out.shape[0])
            gates.gates.clear()
            gates.outs.clear()
    finally:
        gates.close()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ConfigError(f"importance {importance!r} needs calibration data: the batches were empty")
    if importance != "activation" and all(float(v.abs().sum()) == 0.0 for v in sums.values()):
        raise RunError(f"importance {importance!r}: every gradient was zero on the calibration data; "
                       "use importance='activation' or 'weight' for this model")
    head_s = {k[1]: v / seen for k, v in sums.items() if k[0] == "head"}
    ffn_s = {k[1]: v / seen for k, v in sums.items() if k[0] == "ffn"}
    return head_s, ffn_s


def importance_scores(model: nn.Module, blocks: Sequence[Block], importance: str, batches: Iterable[Mapping[str, Any]] | None,
                      heads: bool = True, ffn: bool = True, seed: int = 0) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Head scores (each layer normalised to unit L2 norm, Michel et al. 2019) and neuron scores."""
    if importance == "weight":
        h, n = weight_scores(blocks)
    else:
        if batches is None:
            raise ConfigError(f"importance {importance!r} needs calibration data: prune(model, config, data=...) "
                              "with batches of the model's inputs (or importance='weight', which needs none)")
        h, n = data_scores(model, blocks, batches, importance, heads, ffn, seed)
    h = {k: v / v.norm().clamp_min(1e-12) for k, v in h.items()} if heads else {}
    return h, (n if ffn else {})


__all__ = ["SUPPORTED", "Block", "Gates", "blocks_of", "calibration_loss", "data_scores", "importance_scores",
           "masked", "weight_scores"]
