"""Weight-only low-bit quantization of Linear layers, packed so the bytes on disk really drop.

Each selected `nn.Linear` is replaced by a `QuantizedLinear` that stores its weight as packed
2..8-bit integers (`packing.pack_rows`: int4 two per byte, int2 four per byte) plus one scale
(fp16 by default) per group of `group_size` consecutive input features, and a packed zero point
per group when asymmetric. Forward dequantizes on the fly (`w = (q - z) * s`) and runs a float
matmul: the win is memory and bytes on disk (about bits/32 of fp32 plus ~2/group_size bytes per
weight for fp16 scales), not arithmetic speed on a CPU.

Rounding (`algorithm`) is round-to-nearest ("rtn", optionally with a per-group clipping range chosen by a
weight-MSE grid search) or error-compensating GPTQ ("gptq", Frantar et al. 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", arXiv:2210.17323; see
`gptq.py`), which needs calibration inputs. Group-wise scales follow the same paper and
Dettmers & Zettlemoyer 2023, "The case for 4-bit precision: k-bit Inference Scaling Laws".

The swap is logged with `record_edit(model, "weight_only", layers=...)`; the replay function
registered here turns the same module names of a freshly built model into empty
`QuantizedLinear` shells of the right shapes, so `load_state_dict(strict=True)` works.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.config import Config
from condense.core.errors import ConfigError, did_you_mean
from condense.core.face import LayerFace
from condense.core.linear import is_conv1d, is_linear, linear_type_names
from condense.core.select import select_modules
from condense.models.edits import EDITS, record_conv1d_swap, record_edit
from condense.quantize.modules.groups import (  # noqa: F401  (re-exported: the module's public math)
    QuantizedWeight,
    check_bits,
    dequantize_groups,
    fake_quantized,
    group_count,
    group_qparams,
    qparams_from_range,
    quantize_groups,
    quantize_to_int,
    round_scale,
    rtn_quantize,
    split_groups,
)
from condense.quantize.modules.packing import pack_rows, packed_numel, unpack_rows
from condense.quantize.registry import QUANTIZERS, QuantMethod

__all__ = [
    "QuantizedLinear",
    "QuantizedWeight",
    "WeightOnlyConfig",
    "dequantize_groups",
    "group_qparams",
    "quantize_groups",
    "quantize_weight_only",
    "quantized_linear_nbytes",
    "rtn_quantize",
]

SCALE_DTYPES = {"float16": torch.float16, "float32": torch.float32}

#: rounding algorithm -> fn(model, bits per layer, config, calibration) that swaps the selected
#: Linears for QuantizedLinear in place; "rtn" (round to nearest) is built in, "gptq" registers
#: itself in gptq.py
ALGORITHMS: dict[str, Callable[..., None]] = {}


@dataclasses.dataclass
class WeightOnlyConfig(Config):
    """Weight-only quantization of Linear layers.

    bits: 2..8. group_size: consecutive input features sharing one scale (0 = one scale per
    output row). symmetric: signed integers, no zero point; else unsigned with a zero point per
    group. algorithm: "rtn" (round to nearest) or "gptq" (needs calibration inputs); it is not
    called `method` because `quantize()` reads a mapping's "method" key as the quantizer name
    ("weight_only"). clip_search:
    choose each group's clipping range among shrunken min/max by weight MSE (cheap, helps at
    <= 4 bits). layer_bits: per-layer overrides `{module name: bits}` (mixed precision).
    percdamp / block_size / sequential: GPTQ settings (damping as a fraction of mean diag(H),
    lazy-update block width, quantize layers one after another on already-quantized inputs).
    max_calibration_batches: use at most this many calibration batches (None = all).
    """

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    algorithm: Literal["rtn", "gptq"] = "rtn"
    scale_dtype: Literal["float16", "float32"] = "float16"
    clip_search: bool = True
    targets: list[str] | None = None
    ignore: list[str] = dataclasses.field(default_factory=list)
    layer_bits: dict[str, int] = dataclasses.field(default_factory=dict)
    percdamp: float = 0.01
    block_size: int = 128
    sequential: bool = True
    max_calibration_batches: int | None = None

    def validate(self) -> None:
        check_bits(self.bits, "WeightOnlyConfig.bits")
        for name, b in self.layer_bits.items():
            check_bits(b, f"WeightOnlyConfig.layer_bits[{name!r}]")
        if self.group_size < 0:
            raise ConfigError(f"WeightOnlyConfig.group_size must be >= 0 (0 = per row), got {self.group_size}")
        if not 0.0 < self.percdamp < 1.0:
            raise ConfigError(f"WeightOnlyConfig.percdamp must be in (0, 1), got {self.percdamp}")
        if self.block_size < 1:
            raise ConfigError(f"WeightOnlyConfig.block_size must be >= 1, got {self.block_size}")
        if self.max_calibration_batches is not None and self.max_calibration_batches < 1:
            raise ConfigError("WeightOnlyConfig.max_calibration_batches must be >= 1 or null")


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


def quantized_linear_nbytes(
    in_features: int,
    out_features: int,
    bits: int,
    group_size: int,
    symmetric: bool = True,
    bias: bool = True,
    scale_bytes: int = 2,
    bias_bytes: int = 4,
) -> int:
    """Bytes of a QuantizedLinear's state (packed weight, scales, zero points, bias)."""
    ng = group_count(in_features, group_size)
    n = out_features * packed_numel(in_features, bits) + out_features * ng * scale_bytes
    if not symmetric:
        n += out_features * packed_numel(ng, bits)
    if bias:
        n += out_features * bias_bytes
    return n


class QuantizedLinear(LayerFace, nn.Module):
    """A Linear layer whose weight is stored as packed low-bit integers with group-wise scales.

    Buffers: `qweight` uint8 `(out, ceil(in*bits/8))` (each row packed on its own), `scales`
    `(out, n_groups)` in fp16 or fp32, `qzeros` uint8 `(out, ceil(n_groups*bits/8))` when
    asymmetric. `bias` stays a float parameter (same state-dict key as `nn.Linear`). The weight
    is dequantized in every forward; `bits`, `group_size` and `symmetric` are constructor
    arguments (recorded in the edit log), not state.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bits: int = 4,
        group_size: int = 128,
        symmetric: bool = True,
        scale_dtype: torch.dtype | str = torch.float16,
    ) -> None:
        super().__init__()
        check_bits(bits, "QuantizedLinear")
        if isinstance(scale_dtype, str):
            scale_dtype = SCALE_DTYPES[scale_dtype]
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.symmetric = symmetric
        ng = group_count(in_features, group_size)
        self.register_buffer(
            "qweight", torch.zeros(out_features, packed_numel(in_features, bits), dtype=torch.uint8)
        )
        self.register_buffer("scales", torch.ones(out_features, ng, dtype=scale_dtype))
        if symmetric:
            self.qzeros: Tensor | None = None
        else:
            self.register_buffer(
                "qzeros", torch.zeros(out_features, packed_numel(ng, bits), dtype=torch.uint8)
            )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._block_fused_fastpath()

    @property
    def weight(self) -> Tensor:
        """The face of the replaced `nn.Linear` (`condense.core.face`): the dequantized weight
        `(out, in)`, computed on each read (in the bias's dtype; float32 without a bias)."""
        return self.dequantized_weight(torch.float32 if self.bias is None else self.bias.dtype)

    @property
    def n_groups(self) -> int:
        return group_count(self.in_features, self.group_size)

    @classmethod
    def from_quantized(cls, linear: nn.Linear, qw: QuantizedWeight) -> QuantizedLinear:
        """Build from a float Linear (for shapes and bias) and its quantized weight."""
        mod = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            bits=qw.bits,
            group_size=qw.group_size,
            symmetric=qw.symmetric,
            scale_dtype=qw.scales.dtype,
        )
        dev = linear.weight.device
        mod.to(dev)
        mod.qweight.copy_(pack_rows(qw.q.to(dev), qw.bits, signed=qw.symmetric))
        mod.scales.copy_(qw.scales.to(dev))
        if qw.zeros is not None:
            mod.qzeros.copy_(pack_rows(qw.zeros.to(dev), qw.bits, signed=False))
        if linear.bias is not None:
            mod.bias.data.copy_(linear.bias.detach().float())
        return mod

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        group_size: int = 128,
        symmetric: bool = True,
        *,
        clip_search: bool = True,
        scale_dtype: torch.dtype = torch.float16,
    ) -> QuantizedLinear:
        """Round-to-nearest quantization of `linear`'s weight."""
        qw = rtn_quantize(
            linear.weight, bits, group_size, symmetric, clip_search=clip_search, scale_dtype=scale_dtype
        )
        return cls.from_quantized(linear, qw)

    def int_weight(self) -> Tensor:
        """The unpacked integer weight `(out, in)` (int8 signed or uint8 unsigned)."""
        return unpack_rows(self.qweight, self.bits, self.in_features, signed=self.symmetric)

    def zero_points(self) -> Tensor | None:
        if self.qzeros is None:
            return None
        return unpack_rows(self.qzeros, self.bits, self.n_groups, signed=False)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        # Unpack as unsigned (uint8 shifts / masks only) and sign-extend in float: every op has an
        # ONNX Runtime kernel, so the model exports with its weights still packed.
        q = unpack_rows(self.qweight, self.bits, self.in_features, signed=False).float()
        if self.symmetric:
            q = q - (q >= 2 ** (self.bits - 1)).float() * float(2**self.bits)
        w = dequantize_groups(q, self.scales, self.zero_points(), self.group_size)
        return w.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def spec(self) -> dict[str, Any]:
        """Plain data that rebuilds an empty shell of this module (for the edit log)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "scale_dtype": str(self.scales.dtype).removeprefix("torch."),
        }

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, bits={self.bits}, group_size={self.group_size}, {kind}"
        )


# --------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------




def select_linears(
    model: nn.Module, targets: list[str] | None, ignore: list[str], *, what: str = "weight-only"
) -> dict[str, nn.Linear]:
    """Selected modules that have a weight-only form; others are skipped with a warning.

    transformers' Conv1D layers (GPT-2) count as Linear: the selected ones are swapped in `model`
    (the caller's working copy) for bit-identical nn.Linear layers, recorded in its edit log
    (`condense.models.edits.record_conv1d_swap`), and returned as those Linears."""
    if targets is None and not any(is_linear(m) for m in model.modules()):
        raise ConfigError(f"{what} quantization: the model has no nn.Linear layer")
    chosen = select_modules(model, targets, ignore, default=linear_type_names(model))
    ignored = set(select_modules(model, ignore, None, field="ignore")) if ignore else set()
    for name, mod in list(chosen.items()):
        if not is_linear(mod) and any(True for _ in mod.children()):
            del chosen[name]  # a selected container stands for the Linear layers inside it
            for sub, m in mod.named_modules():
                if sub and is_linear(m) and f"{name}.{sub}" not in ignored:
                    chosen.setdefault(f"{name}.{sub}", m)
    mha_children = {
        f"{n}.{c}" if n else c
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for c, _ in m.named_children()
    }
    out: dict[str, nn.Linear] = {}
    skipped: dict[str, str] = {}
    for name, mod in chosen.items():
        if isinstance(mod, QuantizedLinear):
            skipped[name] = "already quantized"
        elif type(mod) is not nn.Linear and not is_conv1d(mod):
            skipped[name] = f"{type(mod).__name__} has no {what} quantized form"
        elif name in mha_children:
            skipped[name] = "nn.MultiheadAttention reads this weight directly"
        else:
            out[name] = mod
    if skipped:
        lines = "; ".join(f"{n}: {why}" for n, why in skipped.items())
        warnings.warn(f"{what} quantization skipped {len(skipped)} module(s): {lines}", stacklevel=3)
    if not out:
        raise ConfigError(f"{what} quantization: no quantizable nn.Linear among the selected modules")
    record_conv1d_swap(model, [n for n, m in out.items() if is_conv1d(m)])
    return {n: model.get_submodule(n) for n in out}  # type: ignore[misc]


def layer_bits_for(config: WeightOnlyConfig, names: Iterable[str]) -> dict[str, int]:
    names = list(names)
    for key in config.layer_bits:
        if key not in names:
            raise ConfigError(
                f"WeightOnlyConfig.layer_bits: {key!r} is not a selected Linear layer"
                f"{did_you_mean(key, names)}"
            )
    return {n: config.layer_bits.get(n, config.bits) for n in names}


def quantize_weight_only(
    model: nn.Module, config: WeightOnlyConfig | None = None, calibration: Any = None
) -> nn.Module:
    """Return a copy of `model` with the selected Linear layers replaced by `QuantizedLinear`.

    `calibration` (an iterable of batches: tensors, `{"input": x}` dicts, keyword dicts for
    Hugging Face models, or tuples of positional inputs) is required for `algorithm="gptq"` and
    ignored by "rtn". The caller's model is never modified.
    """
    config = config or WeightOnlyConfig()
    was_training = model.training
    model = copy.deepcopy(model)
    linears = select_linears(model, config.targets, config.ignore)
    bits = layer_bits_for(config, linears)
    scale_dtype = SCALE_DTYPES[config.scale_dtype]
    if config.algorithm != "rtn":  # error-correcting rounding, registered by its module (gptq.py)
        ALGORITHMS[config.algorithm](model, bits, config, calibration)
    else:
        for name, lin in linears.items():
            q = QuantizedLinear.from_linear(
                lin, bits[name], config.group_size, config.symmetric,
                clip_search=config.clip_search, scale_dtype=scale_dtype,
            )
            model.set_submodule(name, q)
    layers = {name: model.get_submodule(name).spec() for name in linears}
    record_edit(model, "weight_only", layers=layers)
    model.train(was_training)
    return model


def _replay_weight_only(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Swap the named Linear layers of a fresh model for empty QuantizedLinear shells."""
    for name, spec in layers.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"weight_only replay: the model has no module {name!r}") from None
        if isinstance(old, nn.Linear) and (old.in_features, old.out_features) != (
            spec["in_features"], spec["out_features"]
        ):
            raise ConfigError(
                f"weight_only replay: {name!r} is {old.in_features}->{old.out_features}, "
                f"the log says {spec['in_features']}->{spec['out_features']}"
            )
        shell = QuantizedLinear(
            spec["in_features"], spec["out_features"], spec["bias"],
            bits=spec["bits"], group_size=spec["group_size"], symmetric=spec["symmetric"],
            scale_dtype=spec.get("scale_dtype", "float16"),
        )
        ref = next(old.parameters(), None)
        if ref is not None:
            shell.to(ref.device)
        model.set_submodule(name, shell)


EDITS.register("weight_only", _replay_weight_only)
QUANTIZERS.register("weight_only", QuantMethod(WeightOnlyConfig, quantize_weight_only, deploys="packed",
                                              edit_kinds=("weight_only",)))
