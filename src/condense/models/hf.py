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
"""
from __future__ import annotations

import contextlib
import copy
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError, InputFileError
from condense.core.io import atomic_path, atomic_write_text
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
from condense.models.signature import DEFAULT_SIGNATURE, InputSignature, set_signature

HF_PREFIX = "hf:"
STATE_PREFIX = "hf."  # wrapper state-dict keys = STATE_PREFIX + transformers key names
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
POOLINGS = ("mean", "cls")
BUILD_ARGS = ("task", "num_labels", "pooling", "normalize", "attn_implementation", "layers")
SIGNATURE = InputSignature(required=("input_ids", "attention_mask"), optional=("token_type_ids",), keyword=True,
                           dynamic={"input_ids": (1,), "attention_mask": (1,), "token_type_ids": (1,)})


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' progress bars and load reports; condense reports problems itself."""
    tf = transformers_module()
    log = tf.utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


class Pooling(nn.Module):
    """Token states (B, T, H) -> one vector per sequence (B, H); no parameters.

    "mean": average of the states whose attention_mask is 1 (Reimers & Gurevych 2019: mean
    pooling beats CLS for sentence embeddings); "cls": the first token's state.
    """

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {mode!r}")
        self.mode = mode

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class L2Normalize(nn.Module):
    """Rows scaled to unit L2 norm, so a dot product is a cosine similarity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1)


class HFModel(nn.Module):
    """Base wrapper: `self.hf` is the transformers model; subclasses choose the output."""

    task: ClassVar[str] = "encoder"
    auto_class: ClassVar[str] = "AutoModel"
    condense_output_name: ClassVar[str] = "last_hidden_state"  # the ONNX output's name

    def __init__(self, hf: nn.Module, source_dir: Path) -> None:
        super().__init__()
        self.hf = hf
        #: folder the tokenizer / sentence-transformers files are copied from when saved
        self.source_dir = Path(source_dir)
        self.build_kwargs: dict[str, Any] = {"task": self.task}
        set_signature(self, SIGNATURE)

    @property
    def config(self) -> Any:
        return self.hf.config

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             token_type_ids: torch.Tensor | None) -> Any:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": True}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        return self.hf(**kw)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(input_ids, attention_mask, token_type_ids).last_hidden_state


class HFEncoder(HFModel):
    """task "encoder": the last hidden states (B, T, H)."""


class HFSentenceEmbedding(HFModel):
    """task "sentence-embedding": pooled (mean by default) and L2-normalised states (B, H)."""

    task = "sentence-embedding"
    condense_output_name = "sentence_embedding"

    def __init__(self, hf: nn.Module, source_dir: Path, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__(hf, source_dir)
        self.pooling = Pooling(pooling)
        self.normalize = L2Normalize() if normalize else nn.Identity()
        self.build_kwargs.update(pooling=pooling, normalize=bool(normalize))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self._run(input_ids, attention_mask, token_type_ids).last_hidden_state
        return self.normalize(self.pooling(hidden, attention_mask))


class HFSequenceClassifier(HFModel):
    """task "sequence-classification": the logits tensor (B, num_labels), not a ModelOutput."""

    task = "sequence-classification"
    auto_class = "AutoModelForSequenceClassification"
    condense_output_name = "logits"

    def __init__(self, hf: nn.Module, source_dir: Path) -> None:
        super().__init__(hf, source_dir)
        self.build_kwargs["num_labels"] = int(hf.config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(input_ids, attention_mask, token_type_ids).logits


class HFCausalLM(HFModel):
    """task "causal-lm": the next-token logits (B, T, V); position t scores token t + 1."""

    task = "causal-lm"
    auto_class = "AutoModelForCausalLM"
    condense_output_name = "logits"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": True,
                              "use_cache": False}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        return self.hf(**kw).logits


class HFImageClassifier(HFModel):
    """task "image-classification": images (N, C, H, W) -> the logits tensor (N, num_labels).

    Called like a zoo CNN (`model(batch["input"])`, the default signature): the batch's `input`
    becomes transformers' `pixel_values`.
    """

    task = "image-classification"
    auto_class = "AutoModelForImageClassification"
    condense_output_name = "logits"

    def __init__(self, hf: nn.Module, source_dir: Path) -> None:
        super().__init__(hf, source_dir)
        self.build_kwargs["num_labels"] = int(hf.config.num_labels)
        set_signature(self, DEFAULT_SIGNATURE)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        channels = getattr(self.hf.config, "num_channels", None)
        if pixel_values.dim() != 4 or (isinstance(channels, int) and pixel_values.shape[1] != channels):
            raise ConfigError(f"this {type(self.hf).__name__} takes images (N, {channels or 'C'}, H, W), got "
                              f"{tuple(pixel_values.shape)}; give it data of that shape")
        try:
            return self.hf(pixel_values=pixel_values, return_dict=True).logits
        except ValueError as e:  # transformers' own input checks (e.g. ViT: "Input image size ... doesn't match")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{type(self.hf).__name__} refused images of shape {tuple(pixel_values.shape)}: "
                              f"{first}") from None


_WRAPPERS: dict[str, type[HFModel]] = {"encoder": HFEncoder, "sentence-embedding": HFSentenceEmbedding,
                                       "sequence-classification": HFSequenceClassifier,
                                       "image-classification": HFImageClassifier, "causal-lm": HFCausalLM}
CLASSIFIER_TASKS = ("sequence-classification", "image-classification")


ENCODER_TASKS = ("sentence-embedding", "encoder")


def is_encoder(model: nn.Module) -> bool:
    """An hf: model whose output is an embedding / hidden states, not class scores."""
    return getattr(model, "task", None) in ENCODER_TASKS


def is_causal_lm(model: Any) -> bool:
    """An hf: decoder whose output is next-token logits (B, T, V)."""
    return getattr(model, "task", None) == "causal-lm"


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
    wrapper = _WRAPPERS[task]
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


TORCHVISION_FIX = ("pip uninstall torchvision (condense and transformers' model classes do not need it), or "
                   "install the torchvision built for this torch (a CPU torch needs the CPU build: "
                   "pip install torchvision --index-url https://download.pytorch.org/whl/cpu); see docs/any_model.md")


def guard_torchvision() -> str | None:
    """Keep a torchvision that cannot be imported from breaking transformers; None when all is well.

    PyPI's torchvision is a CUDA build: beside a CPU torch its C++ ops do not load and `import
    torchvision` raises ("operator torchvision::nms does not exist"). transformers decides that
    torchvision is there by `importlib.util.find_spec` (no environment switch turns it off), then
    its vision model modules import it, so every image model (and `AutoImageProcessor`) fails to
    load. Here a torchvision that is installed but does not import is blocked for this process
    (`sys.modules["torchvision"] = None`: find_spec answers None, `import torchvision` raises
    ImportError) and transformers' cached answer is dropped, with a warning that names the fix.
    Returns that warning's text when it blocked torchvision (now or earlier). An absent or working
    torchvision is left alone; the import is tried once per process.
    """
    import importlib.util
    import sys
    import warnings

    global _TORCHVISION_BLOCKED
    if "torchvision" in sys.modules:
        return _TORCHVISION_BLOCKED if sys.modules["torchvision"] is None else None
    try:
        if importlib.util.find_spec("torchvision") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        import torchvision  # noqa: F401
        return None
    except Exception as e:  # RuntimeError (missing C++ ops), OSError (missing .so), ImportError
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {first}"[:200]
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        sys.modules.pop(name, None)
    sys.modules["torchvision"] = None  # type: ignore[assignment]
    iu = sys.modules.get("transformers.utils.import_utils")
    for name in dir(iu) if iu is not None else ():
        if name.startswith("is_torchvision"):
            with contextlib.suppress(AttributeError):
                getattr(iu, name).cache_clear()
    _TORCHVISION_BLOCKED = (f"torchvision is installed but does not import ({reason}); condense hides it from "
                            f"transformers in this process. Fix: {TORCHVISION_FIX}")
    warnings.warn(_TORCHVISION_BLOCKED, RuntimeWarning, stacklevel=2)
    return _TORCHVISION_BLOCKED


_TORCHVISION_BLOCKED: str | None = None


def _auto(auto_class: str) -> Any:
    guard_torchvision()  # before transformers imports a model module that imports torchvision
    return getattr(transformers_module(), auto_class)


def _from_pretrained(path: Path, auto_class: str, attn: str, extra: dict[str, Any], fresh_head: bool) -> nn.Module:
    """from_pretrained, local safetensors only; weights the file lacks are an error, except a
    fresh classifier head (`fresh_head`) and the pooler an AutoModel task never uses."""
    cls = _auto(auto_class)
    try:
        with _quiet():
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
    if task not in _WRAPPERS:
        raise InputFileError(f"{folder}: unknown hf: task {task!r} in condense.json (one of {tuple(_WRAPPERS)})")
    _check_kwargs(task, None, pooling, normalize, attn)
    path = model_folder(folder)
    read_config(path)
    wrapper = _WRAPPERS[task]
    with _quiet(), torch.random.fork_rng(devices=[]):
        config = _auto("AutoConfig").from_pretrained(str(path), local_files_only=True)
        hf = _auto(wrapper.auto_class).from_config(config, attn_implementation=attn)
    if task == "sentence-embedding":
        out: HFModel = HFSentenceEmbedding(hf, path, pooling or "mean", True if normalize is None else normalize)
    else:
        out = wrapper(hf, path)
    if attn != "eager":
        out.build_kwargs["attn_implementation"] = attn
    return out.eval()


# -- artifacts -------------------------------------------------------------------------------------
def to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wrapper state-dict keys -> transformers key names (the `hf.` prefix dropped)."""
    return {k.removeprefix(STATE_PREFIX): v for k, v in state.items()}


def from_hf_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers key names -> this wrapper's keys (inverse of `to_hf_state`)."""
    own = model.state_dict()
    return {(STATE_PREFIX + k if STATE_PREFIX + k in own or k not in own else k): v for k, v in state.items()}


def write_side_files(model: HFModel, folder: Path) -> list[str]:
    """config.json (from the in-memory config) and the source's tokenizer / sentence-transformers
    files into `folder`; returns their relative paths. Each file is fsynced."""
    cfg = copy.deepcopy(model.hf.config)
    cfg.architectures = [type(model.hf).__name__]
    atomic_write_text(folder / CONFIG_NAME, cfg.to_json_string(use_diff=True))
    written = [CONFIG_NAME]
    src = model.source_dir
    for rel in side_files(src) if src.is_dir() else []:
        with atomic_path(folder / rel) as tmp:
            shutil.copyfile(src / rel, tmp)
        written.append(rel)
    return written


def config_builds(build: Any, config: Any, hf_state: dict[str, torch.Tensor]) -> bool:
    """Whether `build(config)` (a transformers class or `AutoModel...from_config`), made on the
    meta device, has exactly the keys and shapes of `hf_state`."""
    try:
        with _quiet(), torch.device("meta"):
            ref = build(config)
    except Exception:  # noqa: BLE001  (a config transformers cannot rebuild: not loadable)
        return False
    own = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    return own == {k: tuple(v.shape) for k, v in hf_state.items()}


def transformers_loadable(model: HFModel, hf_state: dict[str, torch.Tensor]) -> bool:
    """Whether `hf_state` has exactly the keys and shapes transformers builds from the config
    (False after structural edits such as pruned channels: then only condense.load opens it)."""
    return config_builds(_auto(model.auto_class).from_config, model.hf.config, hf_state)


def artifact_info(model: HFModel, loadable: bool) -> dict[str, Any]:
    """The `hf` section of condense.json."""
    tf = transformers_module()
    return {"task": model.task, "auto_class": model.auto_class, "architecture": type(model.hf).__name__,
            "transformers_version": tf.__version__, "transformers_loadable": loadable,
            "source": str(model.source_dir)}


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
]
