"""int8 for Hugging Face transformer encoders: ONNX export, ORT fusion, SmoothQuant, outlier split,
dynamic int8 -- as one library call.

    from condense.quantize.transformer import TransformerInt8Config, export_transformer_int8
    res = export_transformer_int8(model, "model.int8.onnx", TransformerInt8Config(), calibration=data)

Steps (each a config field; `benchmarks/quant_minilm.py` measured every one on all-MiniLM-L6-v2):

1. fp32 ONNX from the condense HF wrapper (`build_model("hf:<folder>")`), with condense's
   exporter pieces (named inputs and dynamic batch / sequence axes from the model's
   InputSignature, output parity against PyTorch). This path always uses the TorchScript
   exporter: ORT's transformer optimizer recognises attention in its graphs, not in the
   dynamo exporter's (there it fuses only BiasGelu).
2. `fuse`: onnxruntime.transformers' BERT optimizer (Attention, SkipLayerNormalization,
   BiasGelu, EmbedLayerNormalization), checked against the unfused file. Faster at batch 1,
   slower at batch 32 on the machines measured (docs/quantization.md).
3. Calibration (`calibration_samples` samples of any data condense takes, read by
   `condense.quantize.calibration`): per-channel max |x| of the tensors the rewrites need, in ORT.
4. `smoothquant_alpha` and `outlier_channels`: the exact float rewrites of
   `condense.quantize.onnx_smooth` (SmoothQuant on the Linears reading a LayerNorm output; the k
   largest channels of each FFN's middle tensor computed in float).
5. ORT dynamic int8 (`quantize_dynamic_onnx`): `per_channel` weights, `embeddings_int8` tables
   (Gather, or QEmbedLayerNormalization in the fused graph); `ignore` names Linear layers kept
   in float (the one layer-selection language: names, `re:<regex>`, type names).

`quantize(model, TransformerInt8Config(), calibration=...)` (method "transformer") checks the
model and the calibration data and returns a float copy that carries the plan;
`export_int8_onnx(that, example, path, heldout=...)` writes the int8 file. `choose_transformer_int8`
(`transformer_choice.py`) builds several settings and picks by measurement.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.config import Config
from condense.core.cpu import dynamic_int8_scheme, resolve_target
from condense.core.errors import ConfigError
from condense.core.io import atomic_path
from condense.core.linear import is_conv1d, linear_type_names, swap_conv1d
from condense.core.select import select_modules
from condense.data.calibration import calibration_list
from condense.export.onnx import onnx_file_bytes
from condense.models.hf import HFModel
from condense.models.signature import model_inputs
from condense.prune.transformer import head_counts
from condense.quantize.graph import onnx_smooth as osm
from condense.quantize.graph.dynamic_onnx import quantize_dynamic_onnx
from condense.quantize.graph.transformer_graph import (
    agreement,
    batches_of,
    export_fp32_graph,
    fuse_graph,
    linear_nodes,
    output_rows,
    trim_padding,
)

#: ops of ORT's dynamic int8 output that run integer kernels
INT8_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLinear")


@dataclasses.dataclass
class TransformerInt8Config(Config):
    """Transformer int8 settings (defaults: the benchmark's most accurate small-and-fast setting, G).

    `ignore`: Linear layers kept in float (module names, `re:<regex>` or type names); `targets`:
    the Linear layers to quantize (default every Linear). `target`: the CPU family that will run
    the file ("auto": this one); on x86 without VNNI the weights get 7 bits (`reduce_range`),
    see `condense.core.cpu`. SmoothQuant (`smoothquant_alpha`, None
    = off) and the outlier split (`outlier_channels`, 0 = off) need calibration data.
    """

    fuse: bool = True
    per_channel: bool = True
    embeddings_int8: bool = True
    outlier_channels: int = 4
    smoothquant_alpha: float | None = 0.5
    calibration_samples: int = 256
    reduce_range: bool = False
    target: str = "auto"
    opset: int = 17
    targets: list[str] | None = None
    ignore: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        if self.outlier_channels < 0:
            raise ConfigError(f"TransformerInt8Config.outlier_channels must be >= 0, got {self.outlier_channels}")
        if self.smoothquant_alpha is not None and not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise ConfigError(f"TransformerInt8Config.smoothquant_alpha must be in [0, 1] or null, got {self.smoothquant_alpha}")
        if self.calibration_samples < 1:
            raise ConfigError(f"TransformerInt8Config.calibration_samples must be >= 1, got {self.calibration_samples}")
        if self.target != "auto":
            resolve_target(self.target)
        if not 14 <= self.opset <= 20:
            raise ConfigError(f"TransformerInt8Config.opset must be in 14..20, got {self.opset}")

    @property
    def needs_calibration(self) -> bool:
        return self.smoothquant_alpha is not None or self.outlier_channels > 0

    def describe(self) -> str:
        parts = ["fused graph" if self.fuse else "plain graph", "per-channel" if self.per_channel else "per-tensor",
                 "int8 embeddings" if self.embeddings_int8 else "float embeddings"]
        if self.outlier_channels:
            parts.append(f"{self.outlier_channels} FFN outlier channels in float")
        if self.smoothquant_alpha is not None:
            parts.append(f"SmoothQuant alpha {self.smoothquant_alpha:g}")
        if self.ignore:
            parts.append(f"float: {', '.join(self.ignore)}")
        return ", ".join(parts)


@dataclasses.dataclass
class TransformerInt8Result:
    """What `export_transformer_int8` wrote and what it did to the graph."""

    path: Path
    fp32_path: Path | None  # the plain fp32 export, where kept
    bytes: int
    fp32_bytes: int
    size_ratio: float
    graph: str  # "fused" or "plain"
    fusions: dict[str, int]  # fused op counts (empty for the plain graph)
    op_types: list[str]  # what ORT was asked to quantize
    int8_ops: dict[str, int]  # integer ops in the written file
    int8_layers: list[str]  # Linear modules whose weights are int8 in the file
    float_nodes: list[str]  # weight nodes kept in float (ignored layers, outlier branches)
    smoothed: list[dict[str, Any]]
    outlier_splits: list[dict[str, Any]]
    calibration_samples: int
    config: dict[str, Any]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["fp32_path"] = None if self.fp32_path is None else str(self.fp32_path)
        return d


# -- inputs ------------------------------------------------------------------------------------
def check_hf_model(model: Any, what: str = "the transformer int8 path") -> nn.Module:
    """The model if it is a condense Hugging Face wrapper, else a ConfigError naming its class."""
    if not isinstance(model, HFModel):
        raise ConfigError(f"{what} takes a Hugging Face model built with condense.build_model('hf:<folder>') "
                          f"(an HFModel), got {type(model).__name__}; use method 'static' or 'dynamic' for other models")
    return model


def calibration_batches(cfg: TransformerInt8Config, calibration: Any) -> list[dict[str, Any]] | None:
    """The calibration batches the config needs (None when it needs none and got none)."""
    if calibration is None:
        if cfg.needs_calibration:
            asked = [f for f, on in (("smoothquant_alpha", cfg.smoothquant_alpha is not None),
                                     ("outlier_channels", cfg.outlier_channels > 0)) if on]
            raise ConfigError(f"the transformer int8 path needs calibration data for {' and '.join(asked)}: pass "
                              "calibration=<data or batches with input_ids / attention_mask>, or set "
                              "smoothquant_alpha=None and outlier_channels=0")
        return None
    batches = list(batches_of(calibration, 32, cfg.calibration_samples))
    return calibration_list(batches)  # one reader; an empty set is a ConfigError


def _example(model: nn.Module, example: Any, batches: Sequence[dict[str, Any]] | None) -> dict[str, torch.Tensor]:
    if example is None and batches:
        example = batches[0]
    if example is None:  # a short made-up sentence: the exporter only traces shapes
        vocab = int(getattr(model.config, "vocab_size", 1000))
        ids = torch.tensor([[min(101, vocab - 1)] + [min(1000 + i, vocab - 1) for i in range(6)] + [min(102, vocab - 1)]])
        example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if not isinstance(example, dict):
        raise ConfigError(f"the transformer int8 path needs a batch dict example (input_ids, attention_mask), "
                          f"got {type(example).__name__}")
    ex = trim_padding(model_inputs(model, example))
    return {k: v[:2] for k, v in ex.items()}


# -- the workspace: one export, one fusion, one calibration pass, many builds ------------------
class TransformerWorkspace:
    """Exports and calibrates a model once, then builds int8 files for any number of configs."""

    def __init__(self, model: nn.Module, work: Path, *, example: Any = None,
                 calibration: Sequence[dict[str, Any]] | None = None, opset: int = 17) -> None:
        self.source = check_hf_model(model)  # layer selection reads the model as the user built it
        self.model = self.source
        if any(is_conv1d(m) for m in model.modules()):
            # transformers' Conv1D (GPT-2) exports as Gemm on a flattened input; as the bit-identical
            # nn.Linear it exports as the MatMul every rewrite below (and the node matching) reads
            self.model = copy.deepcopy(self.source)
            swap_conv1d(self.model)
        self.work = Path(work)
        self.calibration = list(calibration) if calibration is not None else None
        self.example = _example(self.model, example, self.calibration)
        self.opset = opset
        self._graphs: dict[str, Path] = {}
        self._amax: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self.fusions: dict[str, int] = {}

    def graph(self, kind: str) -> Path:
        """The fp32 graph: "plain" (the export) or "fused" (ORT's optimizer on it)."""
        if kind not in self._graphs:
            if kind == "plain":
                self._graphs[kind] = export_fp32_graph(self.model, self.example, self.work / "fp32.onnx", self.opset)
            else:
                path = self.work / "fp32_fused.onnx"
                self.fusions = fuse_graph(self.graph("plain"), path, self.model, self.example)
                self._graphs[kind] = path
        return self._graphs[kind]

    def amax(self, kind: str, samples: int, tensors: Sequence[str]) -> dict[str, np.ndarray]:
        key = (kind, samples)
        have = self._amax.setdefault(key, {})
        missing = [t for t in tensors if t not in have]
        if missing:
            if not self.calibration:
                raise ConfigError("SmoothQuant / outlier channels need calibration data (calibration=None)")
            feeds = batches_of(self.calibration, 32, samples)
            have.update(osm.channel_amax(osm.load_graph(self.graph(kind)).model, missing, feeds))
        return {t: have[t] for t in tensors}

    def build(self, cfg: TransformerInt8Config, out: Path) -> TransformerInt8Result:
        """Rewrite the fp32 graph as `cfg` says and quantize it to `out` (written atomically)."""
        import onnx

        if cfg.needs_calibration and not self.calibration:
            calibration_batches(cfg, None)  # raises the ConfigError that names the fields
        kind = "fused" if cfg.fuse else "plain"
        gi = osm.load_graph(self.graph(kind))
        notes: list[str] = []
        if cfg.fuse and not self.fusions.get("Attention"):
            notes.append("ORT's transformer optimizer fused no Attention in this model's graph")
        uses = osm.weight_uses(gi)
        where = linear_nodes(gi, uses, self.model)
        chosen = set(select_modules(self.source, cfg.targets, cfg.ignore, default=linear_type_names(self.source)))
        int8_nodes = {node for name, node in where.items() if name in chosen}
        float_nodes = sorted({node for name, node in where.items() if name not in chosen})
        shared = sorted(n for n in float_nodes if n in int8_nodes)
        if shared:
            notes.append(f"{len(shared)} fused node(s) hold both float and int8 layers (fused Attention "
                         "multiplies query, key and value at once); they stay in float")
        groups = osm.smooth_groups(gi, uses) if cfg.smoothquant_alpha is not None else {}
        pairs = osm.ffn_pairs(gi, uses) if cfg.outlier_channels else []
        if cfg.outlier_channels and not pairs:
            notes.append("no feed-forward MatMul -> activation -> MatMul block found: no outlier split")
        n_cal = 0
        amax = {}
        if groups or pairs:
            amax = self.amax(kind, cfg.calibration_samples, [*groups, *(p.second.activation for p in pairs)])
            n_cal = min(cfg.calibration_samples, sum(len(next(iter(b.values()))) for b in self.calibration or []))
        smoothed = osm.apply_smoothquant(gi, groups, amax, cfg.smoothquant_alpha, float_nodes) if groups else []
        splits = osm.apply_outlier_split(gi, pairs, amax, cfg.outlier_channels, float_nodes) if pairs else []
        gi.finish()
        rewritten = self.work / f".rewritten-{os.getpid()}-{id(cfg)}.onnx"
        onnx.save(gi.model, str(rewritten))
        del gi
        op_types = ["MatMul"] + (["Attention"] if cfg.fuse else [])
        if cfg.embeddings_int8:
            op_types.append("EmbedLayerNormalization" if cfg.fuse and self.fusions.get("EmbedLayerNormalization")
                            else "Gather")
        keep_float = float_nodes + [n for s in splits for n in s["float_nodes"]]
        _, _, note = dynamic_int8_scheme(cfg.target, cfg.reduce_range, "qint8")
        if note:
            notes.append(note)
        try:
            quantize_dynamic_onnx(rewritten, out, per_channel=cfg.per_channel, op_types=op_types,
                                  reduce_range=cfg.reduce_range, nodes_to_exclude=keep_float,
                                  extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, target=cfg.target)
        finally:
            rewritten.unlink(missing_ok=True)
        ops = Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node if n.op_type in INT8_OPS)
        size, fp32 = onnx_file_bytes(out), onnx_file_bytes(self.graph("plain"))
        return TransformerInt8Result(
            path=Path(out), fp32_path=None, bytes=size, fp32_bytes=fp32, size_ratio=size / fp32, graph=kind,
            fusions=dict(self.fusions) if cfg.fuse else {}, op_types=op_types, int8_ops=dict(sorted(ops.items())),
            int8_layers=sorted(n for n, node in where.items() if node in int8_nodes and node not in float_nodes),
            float_nodes=keep_float, smoothed=smoothed, outlier_splits=splits, calibration_samples=n_cal,
            config=cfg.to_dict(), notes=notes)


def export_transformer_int8(
    model: nn.Module,
    path: str | os.PathLike[str],
    config: TransformerInt8Config | dict[str, Any] | None = None,
    *,
    calibration: Any = None,
    example: Any = None,
    fp32_path: str | os.PathLike[str] | None = None,
) -> TransformerInt8Result:
    """Write the int8 ONNX of a Hugging Face model at `path` (module docstring); returns what it did.

    `calibration`: any data condense takes, or batch dicts (`input_ids`, `attention_mask`, ...);
    needed for SmoothQuant and the outlier split. `example`: a batch dict to trace the export with
    (default: the first calibration batch). `fp32_path`: where to keep the plain fp32 export.
    """
    cfg = config if isinstance(config, TransformerInt8Config) else TransformerInt8Config.from_dict(config)
    check_hf_model(model)
    notes: list[str] = []
    if cfg.fuse and _uneven_heads(model):
        # ORT's fused Attention op needs hidden_size = heads x head size in every layer
        cfg = dataclasses.replace(cfg, fuse=False)
        notes.append("attention heads were pruned (a different count per layer): ORT's fused Attention op cannot "
                     "express that, so the int8 graph is built on the plain (unfused) export")
    batches = calibration_batches(cfg, calibration)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".work", dir=target.parent))
    try:
        ws = TransformerWorkspace(model, work, example=example, calibration=batches, opset=cfg.opset)
        res = ws.build(cfg, target)
        res.notes[:0] = notes
        if fp32_path is not None:
            with atomic_path(fp32_path) as tmp:
                shutil.copyfile(ws.graph("plain"), tmp)
            res.fp32_path = Path(fp32_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def _uneven_heads(model: nn.Module) -> bool:
    """True when a layer has fewer attention heads than the config declares (pruned heads)."""
    try:
        counts = head_counts(model)
    except Exception:  # noqa: BLE001 - not a BERT-family layout the pruner knows: nothing was pruned by it
        return False
    return any(c != int(model.hf.config.num_attention_heads) for c in counts)


__all__ = [
    "TransformerInt8Config", "TransformerInt8Result", "TransformerWorkspace", "agreement",
    "batches_of", "check_hf_model", "export_transformer_int8", "output_rows",
]
