"""A tokenizer from a local Hugging Face folder, giving unpadded token ids (padding is per batch).

Never the network, never remote code: a folder with `tokenizer.json` is read with the
`tokenizers` library directly (fast to load, no `transformers` import); a folder with only a
slow tokenizer's files (`vocab.txt`, `spiece.model`, `vocab.json` + `merges.txt`, ...) is loaded
with `transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True,
trust_remote_code=False)` under `HF_HUB_OFFLINE=1`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condense.core.errors import ConfigError, InputFileError

SLOW_FILES = ("vocab.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "vocab.json")
PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: not valid JSON ({e})") from None
    return obj if isinstance(obj, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as written in special_tokens_map.json / tokenizer_config.json."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _processor_uses_token_types(processor: Any) -> bool:
    """BERT-style post-processors give the second segment type id 1; others give none."""
    if processor is None:
        return False
    try:
        spec = json.loads(processor.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return False
    kind = spec.get("type")
    if kind == "BertProcessing":
        return True
    if kind == "TemplateProcessing":
        return any(v.get("type_id", 0) for piece in spec.get("pair", []) for v in piece.values())
    if kind == "Sequence":
        return any(p.get("type") == "BertProcessing" for p in spec.get("processors", []))
    return False


class TextTokenizer:
    """Token ids of texts, truncated to `max_length` (None: no truncation), never padded.

    `pad_id` is the id batches are padded with; `token_type_ids` says whether batches carry a
    `token_type_ids` field (the tokenizer's `model_input_names`, or a BERT-style post-processor).
    """

    def __init__(self, folder: Path, backend: Any, kind: str, max_length: int | None, pad_id: int,
                 token_type_ids: bool) -> None:
        self.folder, self.backend, self.kind = folder, backend, kind
        self.max_length, self.pad_id, self.token_type_ids = max_length, pad_id, token_type_ids

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        """(token ids, token type ids or None) of each text."""
        if not texts:
            return [], ([] if self.token_type_ids else None)
        if self.kind == "tokenizers":
            encs = self.backend.encode_batch(list(texts))
            ids = [e.ids for e in encs]
            types = [e.type_ids for e in encs] if self.token_type_ids else None
            return ids, types
        out = self.backend(list(texts), truncation=self.max_length is not None, max_length=self.max_length,
                           padding=False, return_attention_mask=False, return_token_type_ids=self.token_type_ids)
        return list(out["input_ids"]), (list(out["token_type_ids"]) if self.token_type_ids else None)

    def describe(self) -> str:
        return f"{self.kind}:{self.folder}:max_length={self.max_length}:pad={self.pad_id}"

    def __repr__(self) -> str:
        return f"TextTokenizer({str(self.folder)!r}, {self.kind}, max_length={self.max_length})"


def load_tokenizer(
    folder: str | Path | None, *, max_length: int | None = 128, token_type_ids: bool | None = None
) -> TextTokenizer:
    """The tokenizer in a local Hugging Face folder (see the module docstring)."""
    if folder is None:
        raise ConfigError("text: pass tokenizer=<local Hugging Face tokenizer folder>")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise ConfigError(f"text: max_length must be an integer >= 2 or null (no truncation), got {max_length!r}")
    if token_type_ids is not None and not isinstance(token_type_ids, bool):
        raise ConfigError(f"text: token_type_ids must be true, false or null (automatic), got {token_type_ids!r}")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputFileError(f"{path}: tokenizer folder not found (expected a local Hugging Face tokenizer "
                             "folder with tokenizer.json, or vocab.txt / spiece.model / vocab.json + merges.txt)")
    config = _read_json(path / "tokenizer_config.json")
    if (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(path, config, max_length, token_type_ids)
    if any((path / f).is_file() for f in SLOW_FILES):
        if "auto_map" in config:
            raise ConfigError(f"{path / 'tokenizer_config.json'}: declares auto_map (custom tokenizer code); "
                              "refused: condense never runs code from a model folder")
        return _from_transformers(path, max_length, token_type_ids)
    found = sorted(p.name for p in path.iterdir())[:12]
    raise InputFileError(
        f"{path}: no tokenizer files; expected tokenizer.json (a Hugging Face fast tokenizer) or a slow "
        f"tokenizer's {', '.join(SLOW_FILES)} (with tokenizer_config.json); found: {', '.join(found) or 'nothing'}"
    )


def _from_tokenizer_json(path: Path, config: dict[str, Any], max_length: int | None,
                         token_type_ids: bool | None) -> TextTokenizer:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError("text: the `tokenizers` package is needed (pip install 'torch-condense[hf]')") from None
    file = path / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a plain Exception on a malformed file
        raise InputFileError(f"{file}: not a readable Hugging Face tokenizer ({e})") from None
    baked_padding = tok.padding
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length)
    special = _read_json(path / "special_tokens_map.json")
    pad_id = None
    for text in (_token_text(special.get("pad_token")), _token_text(config.get("pad_token")), *PAD_CANDIDATES):
        if text is not None and tok.token_to_id(text) is not None:
            pad_id = tok.token_to_id(text)
            break
    if pad_id is None:
        pad_id = int(baked_padding["pad_id"]) if baked_padding else 0
    if token_type_ids is None:
        names = config.get("model_input_names")
        token_type_ids = ("token_type_ids" in names if isinstance(names, list)
                          else _processor_uses_token_types(tok.post_processor))
    return TextTokenizer(path, tok, "tokenizers", max_length, int(pad_id), token_type_ids)


def _from_transformers(path: Path, max_length: int | None, token_type_ids: bool | None) -> TextTokenizer:
    os.environ["HF_HUB_OFFLINE"] = "1"  # before the import: huggingface_hub reads it once
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(f"{path}: has no tokenizer.json, and reading a slow tokenizer needs `transformers` "
                          "(pip install 'torch-condense[hf]')") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises OSError / ValueError / KeyError for bad folders
        raise InputFileError(f"{path}: cannot load the tokenizer with transformers.AutoTokenizer "
                             f"({type(e).__name__}: {e})") from None
    if token_type_ids is None:
        token_type_ids = "token_type_ids" in tok.model_input_names
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    return TextTokenizer(path, tok, "transformers", max_length, int(pad_id), token_type_ids)


__all__ = ["TextTokenizer", "load_tokenizer"]
