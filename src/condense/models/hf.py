"""Hugging Face encoders as condense models: `build_model("hf:<local folder>", task=...)`.

The transformers model sits in `model.hf` (its `config` and `save_pretrained` stay reachable)
inside a small wrapper whose forward takes `input_ids`, `attention_mask` and optionally
`token_type_ids` by keyword and returns a plain tensor:

- "sentence-embedding": AutoModel + pooling over the attention mask + L2 normalisation, the
  sentence-transformers recipe (Reimers & Gurevych 2019, "Sentence-BERT", EMNLP); (B, H).
- "sequence-classification": AutoModelForSequenceClassification; the logits (B, num_labels).
- "encoder": AutoModel; last_hidden_state (B, T, H).
- "causal-lm": AutoModelForCausalLM (GPT-2, Llama, Qwen2, Mistral, ...: a folder whose
  `architectures` ends in "ForCausalLM" / "LMHeadModel"); the next-token logits (B, T, V), run
  without a key/value cache. `evaluate` scores it by held-out perplexity and, against a reference,
  per-token agreement and KL (`condense.evaluate.decoder`).
- "image-classification": AutoModelForImageClassification (ViT, ConvNeXt, ResNet, MobileNetV2,
  ...); forward(pixel_values) takes images (N, C, H, W) and returns the logits (N, num_labels). Its
  signature is the single-tensor one: a batch's `input` (an ArrayDataset's, a zoo image dataset's)
  is passed positionally as `pixel_values`, so training, evaluation and export treat it like a zoo
  CNN (the ONNX input is named "input").
- "auto": chosen from the folder (`condense.models.hf_folder.detect_task`): image classifiers by
  their architecture or model_type; any other model_type whose model does not read input_ids
  (audio, encoder-decoder, ...) is refused with the `package.module:factory` route.

Attention runs in the "eager" implementation: it exports to ONNX as plain MatMul/Softmax that
onnxruntime's BERT fusions recognise (benchmarks/quant_minilm.py), and on this CPU it is as fast
as "sdpa" in PyTorch (all-MiniLM-L6-v2, 1 thread: 12.1 vs 11.6 ms at batch 1, 186 vs 191 ms at
batch 32). Pass `attn_implementation="sdpa"` to change it.

Only local folders are read (`local_files_only=True`, HF_HUB_OFFLINE=1), only safetensors
weights, and never with `trust_remote_code`. `condense.save` writes such a model as a folder that
`transformers.AutoModel.from_pretrained` (AutoModelForSequenceClassification for classifiers)
opens directly; `condense.load` rebuilds it from that folder's own config.json.

This module builds the wrappers (`build_hf_model`, `build_from_artifact`, `student_from_teacher`);
the wrapper classes are `hf_wrappers`, the artifact helpers `hf_artifact`, the transformers
guards `hf_runtime`, folder reading `hf_folder`, layer tables `hf_layers` (all re-exported here).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, InputFileError
from condense.models.hf_artifact import (
    STATE_PREFIX,
    artifact_info,
    config_builds,
    from_hf_state,
    to_hf_state,
    transformers_loadable,
    write_side_files,
)
from condense.models.hf_folder import (
    CONFIG_NAME,
    TASKS,
    TEXT_TASKS,
    check_weights,
    detect_task,
    folder_modality,
    folder_num_labels,
    minilm_dir,
    model_folder,
    packaged_model_dir,
    read_config,
    sentence_head,
    side_files,
    transformers_module,
)
from condense.models.hf_layers import (
    encoder_layers,
    keep_layers,
    resolve_layers,
)
from condense.models.hf_runtime import (
    TORCHVISION_FIX,
    guard_torchvision,
    hf_auto_class,
    quiet_transformers,
)
from condense.models.hf_wrappers import (
    CLASSIFIER_TASKS,
    ENCODER_TASKS,
    POOLINGS,
    SIGNATURE,
    WRAPPERS,
    HFCausalLM,
    HFEncoder,
    HFImageClassifier,
    HFModel,
    HFSentenceEmbedding,
    HFSequenceClassifier,
    L2Normalize,
    Pooling,
    is_causal_lm,
    is_encoder,
)

HF_PREFIX = "hf:"
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
BUILD_ARGS = ("task", "num_labels", "pooling", "normalize", "attn_implementation", "layers")


def _check_kwargs(task: str, num_labels: int | None, pooling: str | None, normalize: bool | None,
                  attn_implementation: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"hf: task must be one of {TASKS}, got {task!r}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"hf: attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    if num_labels is not None and (not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1):
        raise ConfigError(f"hf: num_labels must be an int >= 1, got {num_labels!r}")
    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"hf: pooling must be one of {POOLINGS}, got {pooling!r}")
    if normalize is not None and not isinstance(normalize, bool):
        raise ConfigError(f"hf: normalize must be true or false, got {normalize!r}")
    if num_labels is not None and task not in ("auto", *CLASSIFIER_TASKS):
        raise ConfigError(f"hf: num_labels applies to tasks {CLASSIFIER_TASKS}, not {task!r}")
    if (pooling is not None or normalize is not None) and task not in ("auto", "sentence-embedding"):
        raise ConfigError(f"hf: pooling / normalize apply to task 'sentence-embedding', not {task!r}")


def build_hf_model(folder: str | Path, task: str = "auto", *, num_labels: int | None = None,
                   pooling: str | None = None, normalize: bool | None = None,
                   attn_implementation: str = "eager", layers: int | Sequence[int] | None = None) -> HFModel:
    """Load a local Hugging Face folder (weights included) as a condense model (module docstring).

    `num_labels` (sequence-classification): required when the folder has no classification
    head (a fresh one is created, initialised from torch's global RNG); must match the folder's
    head when it has one. `pooling` ("mean" | "cls") and `normalize` (sentence-embedding): taken
    from the folder's sentence-transformers files when present, else mean + normalise.
    With task="auto", `num_labels` means "sequence-classification"; otherwise `detect_task`
    decides. `layers`: keep only these transformer blocks (a list of indices, or a count spread
    evenly), their weights copied: the shallow-student initialisation of DistilBERT (Sanh et al.
    2019) and sentence-transformers' distillation examples. `model.build_kwargs` holds every
    resolved choice (the spec `build_model` records).
    """
    _check_kwargs(task, num_labels, pooling, normalize, attn_implementation)
    path = model_folder(folder)
    cfg = read_config(path)
    image = folder_modality(path, cfg) == "image"  # refuses what is neither text nor an image classifier
    check_weights(path)
    if task == "auto":
        task = "image-classification" if image else (
            "sequence-classification" if num_labels is not None else detect_task(path, cfg))
    if image and task != "image-classification":
        raise ConfigError(f"{path}: model_type {cfg['model_type']!r} is an image model; hf: builds it with "
                          f"task 'image-classification' (or 'auto'), not {task!r}")
    if not image and task == "image-classification":
        raise ConfigError(f"{path}: model_type {cfg['model_type']!r} is a text model; task 'image-classification' "
                          f"needs an image classifier folder (text tasks: {TEXT_TASKS})")
    _check_kwargs(task, num_labels, pooling, normalize, attn_implementation)
    extra: dict[str, Any] = {}
    if task in CLASSIFIER_TASKS:
        have = folder_num_labels(cfg)
        if have is None and num_labels is None:
            raise ConfigError(f"{path}: has no classification head; pass num_labels=... for a fresh one")
        if have is not None and num_labels is not None and num_labels != have:
            raise ConfigError(f"{path}: its classification head has {have} labels, num_labels={num_labels} was asked; "
                              f"pass num_labels={have}, or build task='encoder', save it, and put a fresh head on that")
        if num_labels is not None:
            extra["num_labels"] = num_labels
    wrapper = WRAPPERS[task]
    fresh = task in CLASSIFIER_TASKS and folder_num_labels(cfg) is None
    model = _from_pretrained(path, wrapper.auto_class, attn_implementation, extra, fresh)
    if task == "sentence-embedding":
        declared = sentence_head(path)
        out: HFModel = HFSentenceEmbedding(model, path, pooling or declared[0],
                                           declared[1] if normalize is None else normalize)
    else:
        out = wrapper(model, path)
    if attn_implementation != "eager":
        out.build_kwargs["attn_implementation"] = attn_implementation
    if layers is not None:
        out.build_kwargs["layers"] = keep_layers(out.hf, layers)
    return out.eval()


def _from_pretrained(path: Path, auto_class: str, attn: str, extra: dict[str, Any], fresh_head: bool) -> nn.Module:
    """from_pretrained, local safetensors only; weights the file lacks are an error, except a
    fresh classifier head (`fresh_head`) and the pooler an AutoModel task never uses."""
    cls = hf_auto_class(auto_class)
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                              attn_implementation=attn, output_loading_info=True, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputFileError(f"{path}: transformers could not load it ({first})") from None
    bad = sorted(str(k) for k in info.get("mismatched_keys", ()))
    for k in sorted(info.get("missing_keys", ())):
        head = auto_class != "AutoModel" and not k.startswith(f"{model.base_model_prefix}.")
        pooler = ".pooler." in f".{k}"  # BERT's pooler: unused by AutoModel tasks, feeds a classifier head
        if not (fresh_head and (head or pooler)) and not (auto_class == "AutoModel" and pooler):
            bad.append(k)
    if bad:
        raise InputFileError(f"{path / 'model.safetensors'}: weights do not fit config.json (missing or mis-shaped: "
                             f"{bad[:5]}{' ...' if len(bad) > 5 else ''})")
    return model


def build_from_artifact(folder: Path, kwargs: dict[str, Any]) -> HFModel:
    """The architecture of a saved hf: model from the artifact's own config.json, weights NOT loaded.

    `load()` then replays the edit log and loads the weights strictly. Random init runs under a
    forked RNG so loading never moves the caller's random stream.
    """
    kwargs = dict(kwargs)
    task = kwargs.pop("task", "encoder")
    attn = kwargs.pop("attn_implementation", "eager")
    pooling, normalize = kwargs.pop("pooling", None), kwargs.pop("normalize", None)
    kwargs.pop("num_labels", None)  # config.json carries it
    kwargs.pop("layers", None)  # config.json carries the kept depth; the weights are the kept blocks
    if kwargs:
        raise InputFileError(f"{folder}: unknown hf: build arguments {sorted(kwargs)} in condense.json")
    if task not in WRAPPERS:
        raise InputFileError(f"{folder}: unknown hf: task {task!r} in condense.json (one of {tuple(WRAPPERS)})")
    _check_kwargs(task, None, pooling, normalize, attn)
    path = model_folder(folder)
    read_config(path)
    wrapper = WRAPPERS[task]
    with quiet_transformers(), torch.random.fork_rng(devices=[]):
        config = hf_auto_class("AutoConfig").from_pretrained(str(path), local_files_only=True)
        hf = hf_auto_class(wrapper.auto_class).from_config(config, attn_implementation=attn)
    if task == "sentence-embedding":
        out: HFModel = HFSentenceEmbedding(hf, path, pooling or "mean", True if normalize is None else normalize)
    else:
        out = wrapper(hf, path)
    if attn != "eager":
        out.build_kwargs["attn_implementation"] = attn
    return out.eval()


def student_from_teacher(teacher: nn.Module, layers: int | Sequence[int]) -> Any:
    """A copy of the Hugging Face model `teacher` (a condense `HFModel`, e.g. a BERT fine-tuned on
    the task) keeping only the blocks `layers` (indices into the teacher's blocks, or a count
    spread evenly), with the teacher's embeddings and head. The teacher is not changed.
    `build_kwargs["layers"]` records the kept indices, so a `hidden_state` loss with
    `layer_map: kept` pairs each student block with the teacher block it was copied from."""
    if not isinstance(teacher, HFModel):
        raise ConfigError(f"a student built from its teacher's layers needs a Hugging Face (hf:) teacher, got "
                          f"{type(teacher).__name__}")
    student = copy.deepcopy(teacher)
    student.build_kwargs["layers"] = keep_layers(student.hf, layers)
    return student.train(teacher.training)


__all__ = [
    "is_encoder",
    "BUILD_ARGS",
    "HFEncoder",
    "HFImageClassifier",
    "HFModel",
    "HFSentenceEmbedding",
    "HFSequenceClassifier",
    "L2Normalize",
    "Pooling",
    "build_hf_model",
    "encoder_layers",
    "keep_layers",
    "resolve_layers",
    "student_from_teacher",
    "minilm_dir",
    "packaged_model_dir",
    # defined in hf_artifact / hf_runtime / hf_wrappers / hf_folder, importable from here as before
    "STATE_PREFIX",
    "artifact_info",
    "config_builds",
    "from_hf_state",
    "to_hf_state",
    "transformers_loadable",
    "write_side_files",
    "TORCHVISION_FIX",
    "guard_torchvision",
    "ENCODER_TASKS",
    "SIGNATURE",
    "HFCausalLM",
    "is_causal_lm",
    "CONFIG_NAME",
    "side_files",
    "transformers_module",
]
