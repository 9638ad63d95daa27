"""The factorized layer (`LowRank`), how each form builds it, and the `factorize` edit replay.

A `LowRank` is an `nn.Sequential` of plain Linear / Conv2d layers (`down`, optional `core`,
`up`), so every later stage (quantization, ONNX export, profiling) sees ordinary layers. The
edit log records `{layer name: {"form", "rank"}}`; `load()` rebuilds the same shapes on a fresh
model (`replay_factorize`) and then loads the weights strictly.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from condense.core.errors import InputFileError
from condense.core.face import LayerFace
from condense.core.linear import is_conv1d, is_linear, linear_dims
from condense.lowrank.decompose import Spectrum, conv_geometry, factors, matrix_view, spectrum
from condense.models.edits import EDITS

FORMS = ("linear", "channel", "tucker2", "spatial")


_LINEAR_FACE = ("in_features", "out_features")
_CONV_FACE = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


def layer_face(module: nn.Module) -> dict[str, Any]:
    """The hyper-parameters of `module` that third-party forward code reads (a Linear's
    in/out_features; a conv's channels, kernel_size, stride, padding, dilation, groups, padding_mode)."""
    if is_conv1d(module):  # transformers' Conv1D: nf out, nx in
        out_f, in_f = linear_dims(module)
        return {"in_features": in_f, "out_features": out_f}
    names = _LINEAR_FACE if isinstance(module, nn.Linear) else _CONV_FACE
    return {n: getattr(module, n) for n in names if hasattr(module, n)}


class LowRank(LayerFace, nn.Sequential):
    """A layer replaced by a product of thinner ones; `form` and `rank` say how.

    It keeps the face of the layer it replaced (`condense.core.face`): `in_features` /
    `out_features` or `in_channels`, `out_channels`, `kernel_size`, `stride`, `padding`,
    `dilation`, `groups`, `padding_mode` as recorded from that layer (`face`), `weight` as the
    effective dense weight of the product of the factors (computed on each read) and `bias` as the
    last factor's bias.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], form: str, rank: list[int],
                 face: dict[str, Any] | None = None) -> None:
        super().__init__(layers)
        self.form = form
        self.rank = list(rank)
        self.face = dict(face or {})
        self._block_fused_fastpath()

    def _face_attr(self, name: str) -> Any:
        if name == "weight":
            return self.dense_weight()
        if name == "bias":
            return self.up.bias
        if name in self.face:
            return self.face[name]
        raise AttributeError(f"'LowRank' object has no attribute {name!r} (the {self.form} factorization "
                             "of a layer that has none)")

    def dense_weight(self) -> Tensor:
        """The weight of the single layer this product equals ([out, in] or [out, in, kh, kw])."""
        up = self.up.weight
        down = self.down.weight
        if self.form == "linear":
            return up @ down
        if self.form == "channel":  # down (r, I, kh, kw), up (O, r, 1, 1)
            return torch.einsum("or,rihw->oihw", up[:, :, 0, 0], down)
        if self.form == "spatial":  # down (r, I, kh, 1), up (O, r, 1, kw)
            return torch.einsum("orw,rih->oihw", up[:, :, 0, :], down[..., 0])
        core = self.core.weight  # tucker2: down (r_in, I, 1, 1), core (r_out, r_in, kh, kw), up (O, r_out, 1, 1)
        return torch.einsum("os,srhw,ri->oihw", up[:, :, 0, 0], core, down[:, :, 0, 0])

    def extra_repr(self) -> str:
        return f"form={self.form}, rank={self.rank}"


def _conv(cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
          padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1), bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)


def empty_lowrank(module: nn.Module, form: str, rank: list[int]) -> LowRank:
    """The `LowRank` shapes for `module` at `rank` (weights uninitialised-by-intent: filled by
    `build_lowrank` or by loading a saved state)."""
    bias = getattr(module, "bias", None) is not None
    if form == "linear":
        assert is_linear(module)
        r = rank[0]
        out_f, in_f = linear_dims(module)
        layers = OrderedDict(down=nn.Linear(in_f, r, bias=False), up=nn.Linear(r, out_f, bias=bias))
    else:
        assert isinstance(module, nn.Conv2d)
        g = conv_geometry(module)
        assert g is not None
        cin, cout = module.in_channels, module.out_channels
        if form == "channel":
            layers = OrderedDict(down=_conv(cin, rank[0], g.kernel, g.stride, g.padding, g.dilation),
                                 up=_conv(rank[0], cout, (1, 1), bias=bias))
        elif form == "spatial":
            layers = OrderedDict(
                down=_conv(cin, rank[0], (g.kernel[0], 1), (g.stride[0], 1), (g.padding[0], 0), (g.dilation[0], 1)),
                up=_conv(rank[0], cout, (1, g.kernel[1]), (1, g.stride[1]), (0, g.padding[1]), (1, g.dilation[1]), bias=bias))
        elif form == "tucker2":
            r_in, r_out = rank
            layers = OrderedDict(down=_conv(cin, r_in, (1, 1)), core=_conv(r_in, r_out, g.kernel, g.stride, g.padding, g.dilation),
                                 up=_conv(r_out, cout, (1, 1), bias=bias))
        else:
            raise ValueError(form)
    out = LowRank(layers, form, rank, layer_face(module))
    w = module.weight
    return out.to(device=w.device, dtype=w.dtype)


def build_lowrank(module: nn.Module, form: str, rank: list[int], spec: Spectrum, chol: Tensor | None,
                  out_spec: Spectrum | None = None) -> LowRank:
    """The factorized replacement of `module` from its (whitened) input-side spectrum `spec`
    (of `matrix_view(module, form)`, whitened by `chol`). tucker2 also truncates the output
    mode: by plain SVD of the input-projected kernel (`out_spec` is unused there; kept for a
    precomputed spectrum of the full kernel)."""
    new = empty_lowrank(module, form, rank)
    w = module.weight.detach()
    dtype = w.dtype
    with torch.no_grad():
        if form in ("linear", "channel", "spatial"):
            b, a = factors(spec, rank[0], chol)
            if form == "linear":
                new.down.weight.copy_(a.to(dtype))
                new.up.weight.copy_(b.to(dtype))
            elif form == "channel":
                new.down.weight.copy_(a.reshape(new.down.weight.shape).to(dtype))
                new.up.weight.copy_(b.reshape(new.up.weight.shape).to(dtype))
            else:  # spatial: a (r, I*kh) -> (r, I, kh, 1); b (O*kw, r) -> (O, r, 1, kw)
                o, _, _, kw = w.shape
                new.down.weight.copy_(a.reshape(new.down.weight.shape).to(dtype))
                new.up.weight.copy_(b.reshape(o, kw, rank[0]).permute(0, 2, 1).unsqueeze(2).to(dtype))
        else:  # tucker2: input mode (whitened when chol), then output mode of what is left
            o, _, kh, kw = w.shape
            r_in, r_out = rank
            b, a = factors(spec, r_in, chol, balance=False)  # b: (O*kh*kw, r_in), a: (r_in, I)
            rest = b.reshape(o, kh, kw, r_in).permute(0, 3, 1, 2).reshape(o, r_in * kh * kw)
            u, s, vh = spectrum(rest)
            new.down.weight.copy_(a.reshape(r_in, -1, 1, 1).to(dtype))
            new.core.weight.copy_((s[:r_out, None] * vh[:r_out]).reshape(r_out, r_in, kh, kw).to(dtype))
            new.up.weight.copy_(u[:, :r_out].reshape(o, r_out, 1, 1).to(dtype))
        bias = getattr(module, "bias", None)
        if bias is not None:
            new.up.bias.copy_(bias.detach())
    return new


def max_rank(module: nn.Module, form: str) -> list[int]:
    """The largest rank of each factor: min(out, in) of the matrix view; tucker2: [in, out] channels."""
    if form == "tucker2":
        return [module.in_channels, module.out_channels]
    m = matrix_view(module, form)
    return [min(m.shape)]


def replay_factorize(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Edit-log replay: replace each named layer by an empty `LowRank` of the recorded form/rank."""
    for name, entry in layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise InputFileError(f"edit log: 'factorize' names layer {name!r}, which this architecture does not have") from None
        form, rank = entry.get("form"), entry.get("rank")
        if form not in FORMS or not isinstance(rank, list) or not all(isinstance(r, int) and r >= 1 for r in rank):
            raise InputFileError(f"edit log: 'factorize' entry for {name!r} is malformed ({entry!r})")
        ok, kind = (is_linear(module), "Linear / Conv1D") if form == "linear" else (isinstance(module, nn.Conv2d), "Conv2d")
        if not ok:
            raise InputFileError(f"edit log: 'factorize' expects {name!r} to be a {kind}, found {type(module).__name__}")
        model.set_submodule(name, empty_lowrank(module, form, rank))


EDITS.register("factorize", replay_factorize)
