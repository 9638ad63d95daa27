"""Tokenizers of Hugging Face model folders, offline: `load_hf_tokenizer` and `encode_texts`.

A folder that declares `auto_map` (custom tokenizer code) is refused: condense never runs code
from a model folder. The tokenizer's `model_max_length` follows sentence-transformers'
`max_seq_length` when the folder declares one.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from condense.core.errors import ConfigError, InputFileError
from condense.core.io import read_json
from condense.models.hf_folder import max_seq_length, model_folder
from condense.models.hf_runtime import hf_auto_class, quiet_transformers
from condense.models.hf_wrappers import HFModel


def load_hf_tokenizer(source: str | Path | HFModel) -> Any:
    """The fast tokenizer of a model folder (or of an hf: model's source folder), offline.

    Its `model_max_length` is sentence-transformers' `max_seq_length` when the folder declares one
    (all-MiniLM-L6-v2: 256), so `encode_texts` truncates as sentence-transformers does.
    """
    folder = model_folder(source.source_dir if isinstance(source, HFModel) else source)
    tcfg_path = folder / "tokenizer_config.json"
    tcfg = read_json(tcfg_path, "tokenizer config") if tcfg_path.is_file() else {}
    if isinstance(tcfg, dict) and "auto_map" in tcfg:
        raise ConfigError(f"{tcfg_path}: declares auto_map (custom tokenizer code); refused: condense never runs "
                          "code from a model folder")
    try:
        with quiet_transformers():
            tok = hf_auto_class("AutoTokenizer").from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise InputFileError(f"{folder}: no usable tokenizer ({str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None
    limit = max_seq_length(folder)
    if limit is not None:
        tok.model_max_length = limit
    return tok


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """A dict batch (int64 input_ids, attention_mask[, token_type_ids]) padded to the longest text."""
    if isinstance(texts, str):
        raise ConfigError("encode_texts: pass a list of texts, not one string")
    limit = max_length or min(int(tokenizer.model_max_length), 512)
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
    return {k: enc[k].long() for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
