"""Structured pruning, depth reduction, int8 and ExecuTorch on models nobody here wrote (issue 25).

A matrix of small, randomly initialised architectures from Hugging Face (text and vision), timm,
torchvision (each only where it imports) and hand-written modules. Per model and cell, every
exception is caught and recorded as "Type: first line", under a per-cell time limit:

- prune: `condense.prune.prune(copy, ChannelConfig(ratio=0.5), example)`; forward works, output
  shape kept, params ratio (target <= 0.6), save/load replays exactly (`condense.save` /
  `condense.load(trust_code=True)`: the model is built by `condense.build_model(
  "benchmarks.any_model:build", arch=...)`, the `package.module:factory` route), ONNX export with
  its parity check (`condense.export.onnx.export_onnx`).
- depth: `condense.lowrank.depth.reduce_depth(copy, DepthConfig(drop=1), eval_fn=..., example_inputs=...)`
  with no hand-named blocks; candidates found, forward and shape after.
- int8: static PTQ (`condense.quantize.quantize(copy, {"method": "static"}, calibration)`); for the
  Hugging Face text models also the transformer int8 ONNX path, through an `hf:` folder
  (`export_transformer_int8`).
- executorch: `condense.export.formats.export(copy, example, path, "executorch", precision="fp32")`
  (lowered to XNNPACK, run in ExecuTorch's runtime, parity-checked).
- tp: Torch-Pruning 1.6.1 (`pip install --no-deps torch-pruning==1.6.1`), MetaPruner with
  MagnitudeImportance(p=1), pruning_ratio 0.5, no per-model setup except ignoring the last Linear
  whose out_features equals the output width.

    python benchmarks/any_model.py [--only NAME[,NAME]] [--cells prune,depth,int8,executorch,tp]
                                   [--cell-timeout 120] [--out benchmarks/results/any_model.json]

Writes the JSON atomically after every model (a run cut short keeps what it measured; with
--only the other models' entries are kept) and prints a table. Figures: docs/any_model.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so `benchmarks.any_model:build` imports when condense.load rebuilds a model
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "any_model.json"
CELLS = ("prune", "depth", "layers", "int8", "executorch", "tp")
IMG = 32  # image side for the vision models (64 for the timm / torchvision ones that downsample 32x)
SEQ = 16
VOCAB = 128

# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


class TextWrapper(nn.Module):
    """A transformers base model called as forward(input_ids) -> last_hidden_state (B, T, H)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids).last_hidden_state


class VisionWrapper(nn.Module):
    """A transformers image classifier called as forward(pixel_values) -> logits (N, labels)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=pixel_values).logits


def _hf_text(model_type: str) -> nn.Module:
    import transformers as tf

    small = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=64)
    cfgs = {
        "bert": lambda: tf.BertConfig(**small),
        "distilbert": lambda: tf.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                                  max_position_embeddings=64),
        "roberta": lambda: tf.RobertaConfig(**{**small, "max_position_embeddings": 80}),
        "albert": lambda: tf.AlbertConfig(**small, embedding_size=32),
        "deberta-v2": lambda: tf.DebertaV2Config(**small),
        "electra": lambda: tf.ElectraConfig(**small, embedding_size=32),
        "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64),
        "llama": lambda: tf.LlamaConfig(**small, num_key_value_heads=2),
        "qwen2": lambda: tf.Qwen2Config(**small, num_key_value_heads=2),
    }
    cfg = cfgs[model_type]()
    return TextWrapper(tf.AutoModel.from_config(cfg, attn_implementation="eager"))


def _hf_vision(model_type: str) -> nn.Module:
    import transformers as tf

    common = dict(num_labels=10, image_size=IMG, num_channels=3)
    cfgs = {
        "vit": lambda: tf.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                    patch_size=8, **common),
        "deit": lambda: tf.DeiTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, patch_size=8, **common,
                                      # transformers 5.25 maps deit to two classes and then iterates
                                      # config.architectures (None from a bare config): TypeError
                                      architectures=["DeiTForImageClassification"]),
        "convnext": lambda: tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10),
        "resnet": lambda: tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                                          layer_type="basic", num_labels=10),
        "mobilenet_v2": lambda: tf.MobileNetV2Config(depth_multiplier=0.35, image_size=IMG, num_labels=10),
        "swin": lambda: tf.SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, patch_size=4,
                                      **common),
        "regnet": lambda: tf.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                                          groups_width=8, num_labels=10),
    }
    return VisionWrapper(tf.AutoModelForImageClassification.from_config(cfgs[model_type](), attn_implementation="eager")
                         if model_type in ("vit", "deit", "swin") else
                         tf.AutoModelForImageClassification.from_config(cfgs[model_type]()))


def _timm(name: str) -> nn.Module:
    import timm

    kw = {"img_size": 64} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


def _torchvision(name: str) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=10)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    """A user's plain residual net: no `shortcut` / `use_residual` attributes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(ResBlock(32), ResBlock(32), ResBlock(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class DenseLike(nn.Module):
    """Concatenation of feature maps (DenseNet-style)."""

    def __init__(self, c0: int = 16, growth: int = 16, layers: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(c0 + i * growth), nn.ReLU(), nn.Conv2d(c0 + i * growth, growth, 3, padding=1))
            for i in range(layers))
        self.trans = nn.Conv2d(c0 + layers * growth, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.trans(x), 1), 1))


class GroupedNet(nn.Module):
    """Grouped and depthwise convolutions (ResNeXt / MobileNet style)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, groups=4), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class SE(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class SENet(nn.Module):
    """Squeeze-excitation blocks (channel gates multiplied back in)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.se1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), SE(32)
        self.conv2, self.bn2, self.se2 = nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), SE(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.se1(F.relu(self.bn1(self.conv1(x))))
        x = self.se2(F.relu(self.bn2(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


class TransformerClassifier(nn.Module):
    """A user's nn.TransformerEncoder over token ids, mean-pooled, classified."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(64, 10)

    def forward(self, input_ids):
        return self.fc(self.encoder(self.embed(input_ids)).mean(1))


HAND = {"user_resnet": ResNetLike, "user_densenet_cat": DenseLike, "user_grouped_conv": GroupedNet,
        "user_se_net": SENet, "user_transformer_encoder": TransformerClassifier}

# name -> (source, builder arg, input kind)
MATRIX: dict[str, tuple[str, str, str]] = {
    **{f"hf_{t.replace('-', '_')}": ("hf-text", t, "tokens") for t in
       ("bert", "distilbert", "roberta", "albert", "deberta-v2", "electra", "gpt2", "llama", "qwen2")},
    **{f"hf_{t}": ("hf-vision", t, "image") for t in
       ("vit", "deit", "convnext", "resnet", "mobilenet_v2", "swin", "regnet")},
    **{f"timm_{t}": ("timm", t, "image64") for t in
       ("resnet18", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "regnetx_002",
        "vit_tiny_patch16_224")},
    **{f"tv_{t}": ("torchvision", t, "image64") for t in ("resnet18", "mobilenet_v3_small", "densenet121")},
    **{n: ("hand-written", n, "tokens" if "transformer" in n else "image") for n in HAND},
}


def build(arch: str) -> nn.Module:
    """The factory `condense.build_model("benchmarks.any_model:build", arch=...)` calls (seeded)."""
    source, key, _ = MATRIX[arch]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if source == "hf-text":
            m = _hf_text(key)
        elif source == "hf-vision":
            m = _hf_vision(key)
        elif source == "timm":
            m = _timm(key)
        elif source == "torchvision":
            m = _torchvision(key)
        else:
            m = HAND[key]()
    return m.eval()


def example_for(arch: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    kind = MATRIX[arch][2]
    g = torch.Generator().manual_seed(seed)
    if kind == "tokens":
        return torch.randint(0, VOCAB, (batch, SEQ), generator=g)
    side = 64 if kind == "image64" else IMG
    return torch.randn(batch, 3, side, side, generator=g)


_SHIM: list[Any] = []  # the torch.library.Library must stay alive, or its definitions go


def torchvision_ops_shim() -> None:
    """Declare the two operators whose fake kernels torchvision registers unconditionally on import.

    PyPI's torchvision 0.28.0 (the release for torch 2.13.0) is a CUDA build: beside the CPU torch
    its `_C.so` does not load (it links libtorch_cuda.so), so `torchvision::nms` is never defined and
    `import torchvision` raises "operator torchvision::nms does not exist". With the two schemas
    declared first, its pure-Python part imports: models build and run, the C++ ops (nms, roi_align,
    deform_conv2d, ...) still do not. For measuring timm / torchvision architectures here, not for
    deployment (docs/any_model.md).
    """
    if _SHIM or "torchvision" in sys.modules:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM.append(lib)


def source_available(source: str) -> str | None:
    """None if the source's package imports, else why not (recorded, never hidden)."""
    pkg = {"hf-text": "transformers", "hf-vision": "transformers", "timm": "timm", "torchvision": "torchvision"}.get(source)
    if pkg is None:
        return None
    if pkg == "transformers":
        from condense.models.hf import guard_torchvision

        guard_torchvision()
    try:
        importlib.import_module(pkg)
    except Exception as e:
        return f"not installed / does not import: {short(e)}"
    return None


# --------------------------------------------------------------------------------------------------
# cells
# --------------------------------------------------------------------------------------------------


class CellTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise CellTimeout(f"cell ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def short(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:240] if text else ''}".rstrip(": ")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def run(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m.eval()
    with torch.no_grad():
        return m(x)


def step(rec: dict[str, Any], key: str, fn, *args) -> Any:
    """Run fn; record True or the error string under rec[key]; return fn's value or None."""
    try:
        out = fn(*args)
        rec[key] = True
        return out
    except CellTimeout:
        raise
    except Exception as e:
        rec[key] = short(e)
        return None


def classifier_to_ignore(model: nn.Module, width: int) -> list[nn.Module]:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == width:
            last = m
    return [last] if last is not None else []


def cell_prune(arch: str, model: nn.Module, x: torch.Tensor, ref: torch.Tensor, work: Path) -> dict[str, Any]:
    import condense
    from condense.export.onnx import export_onnx
    from condense.prune import ChannelConfig, prune

    rec: dict[str, Any] = {}
    m = copy.deepcopy(model)
    p0 = n_params(m)
    if step(rec, "ok", prune, m, ChannelConfig(ratio=0.5), x) is None and rec["ok"] is not True:
        return rec
    y = step(rec, "forward", run, m, x)
    rec["shape_kept"] = y is not None and tuple(y.shape) == tuple(ref.shape)
    rec["params_ratio"] = round(n_params(m) / p0, 4)
    rec["params_ok"] = rec["params_ratio"] <= 0.6
    if y is None:
        return rec

    def roundtrip():
        folder = work / "artifact"
        condense.save(m, folder)
        back = condense.load(folder, trust_code=True)
        if not torch.equal(run(back, x), y):
            raise AssertionError("reloaded model's output differs")

    step(rec, "save_load_exact", roundtrip)
    step(rec, "onnx_parity", lambda: export_onnx(m, x, work / "pruned.onnx"))
    return rec


def cell_depth(arch: str, model: nn.Module, x: torch.Tensor, ref: torch.Tensor, work: Path) -> dict[str, Any]:
    from condense.lowrank.config import DepthConfig
    from condense.lowrank.depth import droppable_blocks, reduce_depth

    rec: dict[str, Any] = {}
    m = copy.deepcopy(model)
    cands = step(rec, "candidates_found", lambda: droppable_blocks(m, example_inputs=x))
    rec["candidates"] = len(cands) if cands else 0
    if not cands:
        return rec

    def score(trial: nn.Module) -> float:
        out = run(trial, x)
        return -float(F.mse_loss(out.float(), ref.float()))

    done = step(rec, "ok", lambda: reduce_depth(m, DepthConfig(drop=1), eval_fn=score, example_inputs=x))
    if done is None:
        return rec
    rec["dropped"] = list(getattr(m, "condense_depth_report", {}).get("dropped", []))
    y = step(rec, "forward", run, m, x)
    rec["shape_kept"] = y is not None and tuple(y.shape) == tuple(ref.shape)
    return rec


def cell_layers(arch: str, model: nn.Module, x: torch.Tensor, ref: torch.Tensor, work: Path) -> dict[str, Any]:
    """Layer-copy student (issue 26): keep 1 of the blocks of a transformers model, then reopen it
    with `from_pretrained` from its saved folder. Not applicable to models without `.hf`."""
    from condense.models.hf_layers import keep_layers

    if getattr(model, "hf", None) is None or not hasattr(model.hf, "save_pretrained"):
        return {}
    rec: dict[str, Any] = {}
    m = copy.deepcopy(model)
    kept = step(rec, "ok", keep_layers, m.hf, 1)
    if kept is None:
        return rec
    rec["kept"] = list(kept)
    y = step(rec, "forward", run, m, x)
    rec["shape_kept"] = y is not None and tuple(y.shape) == tuple(ref.shape)

    def reopen() -> bool:
        m.hf.save_pretrained(work / "student")
        opened = type(m.hf).from_pretrained(work / "student").eval()
        clone = copy.deepcopy(m)
        clone.hf = opened
        return bool(torch.allclose(run(clone, x), y, atol=1e-5, rtol=1e-5))

    if y is not None and step(rec, "from_pretrained", reopen) is False:
        rec["from_pretrained"] = False  # reopened, but the outputs differ
    return rec


def _hf_folder_model(model: nn.Module, work: Path) -> nn.Module:
    """The same random-init transformers model as a condense `hf:` encoder (the transformer int8 path takes only those)."""
    import condense

    folder = work / "hf_folder"
    model.hf.save_pretrained(str(folder))
    return condense.build_model(f"hf:{folder}", task="encoder")


def cell_int8(arch: str, model: nn.Module, x: torch.Tensor, ref: torch.Tensor, work: Path) -> dict[str, Any]:
    from condense.quantize import export_transformer_int8, quantize

    rec: dict[str, Any] = {}
    calib = torch.cat([example_for(arch, 8, seed=s) for s in range(2)])
    q = step(rec, "static", lambda: quantize(copy.deepcopy(model), {"method": "static", "calibration_samples": 16},
                                             calibration=calib))
    if q is not None:
        y = step(rec, "static_forward", run, q, x)
        rec["static_shape_kept"] = y is not None and tuple(y.shape) == tuple(ref.shape)
    if MATRIX[arch][0] == "hf-text":
        def transformer_int8():
            hf = _hf_folder_model(model, work)
            batches = [{"input_ids": example_for(arch, 4, seed=s), "attention_mask": torch.ones(4, SEQ, dtype=torch.long)}
                       for s in range(2)]
            return export_transformer_int8(hf, work / "int8.onnx", calibration=batches)

        step(rec, "transformer", transformer_int8)
    return rec


def cell_executorch(arch: str, model: nn.Module, x: torch.Tensor, ref: torch.Tensor, work: Path) -> dict[str, Any]:
    from condense.export.formats import export

    rec: dict[str, Any] = {}
    r = step(rec, "ok", lambda: export(copy.deepcopy(model), x, work / "model.pte", "executorch", precision="fp32",
                                       latency=False))
    if r is not None:
        rec["max_abs_diff"] = r.max_abs_diff
    return rec


def cell_tp(arch: str, model: nn.Module, x: torch.Tensor, ref: torch.Tensor, work: Path) -> dict[str, Any]:
    import torch_pruning as tp

    rec: dict[str, Any] = {}
    m = copy.deepcopy(model)
    p0 = n_params(m)

    def do():
        pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                      ignored_layers=classifier_to_ignore(m, ref.shape[-1]))
        pruner.step()

    if step(rec, "ok", do) is None and rec["ok"] is not True:
        return rec
    y = step(rec, "forward", run, m, x)
    rec["shape_kept"] = y is not None and tuple(y.shape) == tuple(ref.shape)
    rec["params_ratio"] = round(n_params(m) / p0, 4)
    rec["params_ok"] = rec["params_ratio"] <= 0.6
    return rec


CELL_FNS = {"prune": cell_prune, "depth": cell_depth, "layers": cell_layers, "int8": cell_int8, "executorch": cell_executorch,
            "tp": cell_tp}


def measure(arch: str, cells: list[str], cell_timeout: int) -> dict[str, Any]:
    import condense

    source = MATRIX[arch][0]
    entry: dict[str, Any] = {"source": source, "cells": {}}
    why = source_available(source)
    if why:
        entry["skipped"] = why
        return entry
    t0 = time.perf_counter()
    try:
        with time_limit(cell_timeout):
            model = condense.build_model("benchmarks.any_model:build", arch=arch)
            x = example_for(arch)
            ref = run(model, x)
    except Exception as e:
        entry["build"] = short(e)
        return entry
    entry["build"] = True
    entry["params"] = n_params(model)
    entry["output_shape"] = list(ref.shape)
    entry["build_s"] = round(time.perf_counter() - t0, 2)
    for cell in cells:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"any_model_{arch}_{cell}_") as tmp:
            try:
                with time_limit(cell_timeout), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rec = CELL_FNS[cell](arch, model, x, ref, Path(tmp))
            except Exception as e:  # CellTimeout included
                rec = {"ok": short(e)}
        rec["seconds"] = round(time.perf_counter() - t, 2)
        entry["cells"][cell] = rec
    return entry


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("transformers", "timm", "torchvision", "torch-pruning", "executorch", "onnxruntime", "torch-condense"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
        git["uncommitted_src"] = sorted(line[3:] for line in dirty if line.strip())
    return {"date": _dt.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(), "versions": versions,
            "git": git}


def mark(v: Any) -> str:
    if v is True:
        return "ok"
    if v is False:
        return "no"
    if v is None:
        return "-"
    return "FAIL"


def table(results: dict[str, Any]) -> str:
    head = ["model", "source", "prune", "fwd", "shape", "params", "save/load", "onnx", "depth (cands)", "layer copy",
            "static int8", "tf int8", "executorch", "TP", "TP shape", "TP params"]
    rows = [head, ["---"] * len(head)]
    for name, e in results["models"].items():
        if e.get("skipped") or e.get("build") is not True:
            rows.append([name, e["source"], f"skipped: {e.get('skipped') or e.get('build')}"[:60]] + [""] * (len(head) - 3))
            continue
        c = e["cells"]
        p, d, lc, q, x, t = (c.get(k, {}) for k in CELLS)
        rows.append([
            name, e["source"], mark(p.get("ok")), mark(p.get("forward")), mark(p.get("shape_kept")),
            "-" if p.get("params_ratio") is None else f"{p['params_ratio']:.2f}",
            mark(p.get("save_load_exact")), mark(p.get("onnx_parity")),
            f"{mark(d.get('ok'))} ({d.get('candidates', 0)})" if d else "-",
            mark(lc.get("from_pretrained") if lc.get("ok") is True else lc.get("ok")) if lc else "-",
            mark(q.get("static")) if q else "-", mark(q.get("transformer")) if q else "-",
            mark(x.get("ok")) if x else "-",
            mark(t.get("ok")), mark(t.get("shape_kept")),
            "-" if t.get("params_ratio") is None else f"{t['params_ratio']:.2f}",
        ])
    return "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in rows)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    built = {n: e for n, e in results["models"].items() if e.get("build") is True}

    def count(cell: str, ok) -> int:
        return sum(1 for e in built.values() if cell in e["cells"] and ok(e["cells"][cell]))

    full = lambda r: r.get("ok") is True and r.get("forward") is True and r.get("shape_kept") and r.get("params_ok")  # noqa: E731
    return {
        "models_built": len(built),
        "models_skipped": sorted(n for n in results["models"] if n not in built),
        "condense_prune_full": count("prune", full),
        "condense_prune_save_load": count("prune", lambda r: r.get("save_load_exact") is True),
        "condense_prune_onnx": count("prune", lambda r: r.get("onnx_parity") is True),
        "condense_depth_ok": count("depth", lambda r: r.get("ok") is True and r.get("forward") is True),
        "condense_layer_copy": count("layers", lambda r: r.get("from_pretrained") is True and r.get("shape_kept") is True),
        "layer_copy_applicable": count("layers", lambda r: r.get("ok") is not None),
        "condense_static_int8": count("int8", lambda r: r.get("static") is True and r.get("static_forward") is True),
        "condense_transformer_int8": count("int8", lambda r: r.get("transformer") is True),
        "condense_executorch": count("executorch", lambda r: r.get("ok") is True),
        "torch_pruning_full": count("tp", full),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--cell-timeout", type=int, default=120)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--list", action="store_true", help="print the model names and exit")
    ap.add_argument("--torchvision-ops-shim", action="store_true",
                    help="declare torchvision::nms/qnms before importing torchvision, so PyPI's CUDA torchvision "
                         "0.28.0 imports beside the CPU torch (timm / torchvision rows; measurement only)")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(MATRIX))
        return 0
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in CELLS]
    names = list(MATRIX) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in MATRIX]
    if bad or unknown:
        ap.error(f"unknown cells {bad} / models {unknown}; models: {', '.join(MATRIX)}")
    torch.set_num_threads(1)
    if args.torchvision_ops_shim:  # process-wide: also serves condense.load's re-import of this file
        torchvision_ops_shim()
    from condense.core.io import atomic_write_json

    out = Path(args.out)
    results: dict[str, Any] = {"models": {}}
    if (args.only or set(cells) != set(CELLS)) and out.exists():  # keep the other models' entries and cells
        with contextlib.suppress(ValueError, OSError):
            results = json.loads(out.read_text())
    results.update(environment())
    results["cells"] = cells
    results["torchvision_ops_shim"] = bool(_SHIM)
    results["cell_timeout_s"] = args.cell_timeout
    for name in names:
        t = time.perf_counter()
        entry = measure(name, cells, args.cell_timeout)
        before = results["models"].get(name)
        if before and before.get("build") is True and entry.get("build") is True:  # a --cells subset: keep the rest
            entry["cells"] = {**before.get("cells", {}), **entry["cells"]}
        results["models"][name] = entry
        results["models"] = {n: results["models"][n] for n in MATRIX if n in results["models"]}
        results["summary"] = summary(results)
        atomic_write_json(out, results)
        print(f"{name}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    print(table(results))
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
