"""Replacement modules keep the face of the layer they replace.

condense swaps layers for its own modules (`QuantWrapper`, `QATWrapper`, `LowRank`). Code that
condense does not own reads the replaced layer's attributes in its forward: Hugging Face ViT reads
the patch embedding's `.weight`, MobileNetV2's `apply_tf_padding` reads a conv's `.stride` /
`.kernel_size` / `.dilation` / `.padding`, and torch's own `nn.TransformerEncoderLayer` reads
`linear1.weight` (and `nn.MultiheadAttention` `out_proj.weight`) in its fast-path check.

`LayerFace` answers those reads, read-only, for the names in `FACE_ATTRS` that the replaced layer
has: a missing attribute (nn.Module's own `__getattr__` failed: not a parameter, buffer or
submodule of the replacement) in `FACE_ATTRS` is looked up by `_face_attr`. State-dict keys,
parameters and submodules are untouched (only a lookup that would have failed is answered).

Replacements also block torch's fused Transformer fast path (`torch._transformer_encoder_layer_fwd`)
in any layer that holds them: that kernel would read the faced `.weight`s and run the original
float layers, skipping the replacement's forward. torch falls back to the module-by-module path
when a module in the layer has a forward hook, so each replacement carries an inert pre-hook.
"""
from __future__ import annotations

from typing import Any

from torch import nn

FACE_ATTRS = frozenset({
    "weight", "bias",
    "in_features", "out_features",
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
    "padding_mode", "output_padding", "transposed",
})


def _fused_fastpath_blocker(module: nn.Module, args: Any) -> None:
    """Inert forward pre-hook: its presence makes torch's `nn.TransformerEncoderLayer` take the
    module-by-module path, so the replacement's own forward runs."""
    return None


class LayerFace:
    """Mixin for an `nn.Module` replacement (list it before `nn.Module`): answers reads of the
    replaced layer's attributes (`FACE_ATTRS`) through `_face_attr`."""

    def _face_attr(self, name: str) -> Any:
        """The replaced layer's `name` (override); AttributeError when it has none."""
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def _block_fused_fastpath(self) -> None:
        self.register_forward_pre_hook(_fused_fastpath_blocker)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            if name not in FACE_ATTRS or "_modules" not in self.__dict__:
                raise
        return self._face_attr(name)


class WrapperFace(LayerFace):
    """`LayerFace` for a wrapper holding the original layer at `.module`: its attributes, live."""

    def _face_attr(self, name: str) -> Any:
        inner = self.__dict__["_modules"].get("module")
        if inner is None or not hasattr(inner, name):
            what = "" if inner is None else f" (wrapping {type(inner).__name__}, which has none)"
            raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}{what}")
        return getattr(inner, name)
