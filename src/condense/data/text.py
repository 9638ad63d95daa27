"""Text corpora as token sequences: the `text` source and `text_dataset(texts, tokenizer=...)`.

Reads JSON lines (one object per line, the text under `text_field`), CSV (a header row, the text
in column `text_field`) or plain text (one sample per non-empty line), tokenizes with a tokenizer
from a local Hugging Face folder (`condense.data.tokenizer`) and returns a `TextDataset`.

Tokenization is done once, up front, in chunks of `CHUNK` texts (the `tokenizers` library
batches them in Rust): token ids are small (stored as one int32 array plus offsets, 4 bytes a
token), an epoch then costs no tokenization at all, and DataLoader workers need no tokenizer.
Samples are truncated to `max_length` tokens (special tokens included) and padded per batch,
to the longest sample of that batch, by `TextDataset.collate`.

Labels (optional, `label_field`): strings become class ids in sorted order (`class_names`),
non-negative integers are kept as they are. Splits are seeded and stratified when labelled.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from condense.core.errors import ConfigError, InputFileError
from condense.data.base import Splits
from condense.data.lazy import group_split_positions, hash_parts, split_positions
from condense.data.tabular import encode_labels
from condense.data.text_files import FORMATS, format_of, read_csv, read_jsonl, read_txt
from condense.data.tokenizer import TextTokenizer, load_tokenizer

CHUNK = 4096


class TextDataset(Dataset):
    """Tokenized samples: item i is `{"input_ids", ["token_type_ids"], ["target"]}` (NumPy), and
    `collate(items)` pads a batch to its longest sample, adding `attention_mask` (all int64).

    A map-style `torch.utils.data.Dataset` whose items are dicts, as a Hugging Face tokenizer gives
    one text: `input_ids` (1-D int32 array, unpadded), `token_type_ids` when the tokenizer makes
    them, and `target` (an int class index) only when the data is labelled; an unlabelled split has
    no `target`. Texts differ in length, so batch with the dataset's own padding:
    `DataLoader(ds, batch_size=32, collate_fn=ds.collate)` (also for `Subset(ds, idx)`); torch's
    default collate only stacks equal lengths (batch_size=1).

    Token ids live in one flat int32 array with per-sample offsets, so the dataset pickles and
    forks cheaply to DataLoader workers whatever the number of samples.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, *, pad_id: int, type_ids: np.ndarray | None = None,
                 targets: np.ndarray | None = None, class_names: Sequence[str] = (), source: str = "",
                 sample_ids: np.ndarray | None = None) -> None:
        self.ids = np.asarray(ids, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.type_ids = None if type_ids is None else np.asarray(type_ids, dtype=np.int8)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.pad_id, self.class_names, self.source = int(pad_id), list(class_names), source
        n = len(self.offsets) - 1
        if n < 0 or (self.targets is not None and len(self.targets) != n):
            raise ConfigError(f"TextDataset: {n} samples but {0 if self.targets is None else len(self.targets)} labels")
        # ids unique across the file's splits (train + unlabelled may be concatenated)
        self.sample_ids = (np.arange(max(n, 0), dtype=np.int64) if sample_ids is None
                           else np.asarray(sample_ids, dtype=np.int64))
        self._fingerprint: str | None = None

    uses_random = False  # items are fixed token ids: the loader need not seed each item

    @property
    def labelled(self) -> bool:
        return self.targets is not None

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per sample."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        item: dict[str, Any] = {"input_ids": self.ids[a:b]}
        if self.type_ids is not None:
            item["token_type_ids"] = self.type_ids[a:b]
        if self.targets is not None:
            item["target"] = int(self.targets[i])
        return item

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad `items` to the longest one: input_ids (pad_id), attention_mask, token_type_ids (0)."""
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(items), width), dtype=torch.int64)
        types = torch.zeros((len(items), width), dtype=torch.int64) if "token_type_ids" in items[0] else None
        for r, it in enumerate(items):
            k = len(it["input_ids"])
            ids[r, :k] = torch.from_numpy(it["input_ids"].astype(np.int64))
            mask[r, :k] = 1
            if types is not None:
                types[r, :k] = torch.from_numpy(it["token_type_ids"].astype(np.int64))
        out = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            out["token_type_ids"] = types
        if "target" in items[0]:
            out["target"] = torch.tensor([it["target"] for it in items], dtype=torch.int64)
        return out

    def subset(self, positions: Any) -> TextDataset:
        pos = np.asarray(positions, dtype=np.int64)
        lengths = self.offsets[pos + 1] - self.offsets[pos]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        gather = np.repeat(self.offsets[pos] - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return TextDataset(self.ids[gather], offsets, pad_id=self.pad_id,
                           type_ids=None if self.type_ids is None else self.type_ids[gather],
                           targets=None if self.targets is None else self.targets[pos],
                           class_names=self.class_names, source=self.source, sample_ids=self.sample_ids[pos])

    def without_labels(self) -> TextDataset:
        return TextDataset(self.ids, self.offsets, pad_id=self.pad_id, type_ids=self.type_ids,
                           class_names=self.class_names, source=self.source, sample_ids=self.sample_ids)

    def fingerprint(self) -> str:
        """Hash of the token ids, offsets, type ids, labels and pad id (the content itself)."""
        if self._fingerprint is None:
            self._fingerprint = hash_parts("TextDataset/1", self.pad_id, self.ids, self.offsets,
                                           "none" if self.type_ids is None else self.type_ids,
                                           "unlabelled" if self.targets is None else self.targets)
        return self._fingerprint

    def __repr__(self) -> str:
        kind = "labelled" if self.labelled else "unlabelled"
        return f"TextDataset({len(self)} samples, {len(self.ids)} tokens, {kind})"


# -- tokenizing -----------------------------------------------------------------------------------
def _tokenize(tok: TextTokenizer, texts: Iterator[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(flat ids, offsets, flat type ids) of `texts`, tokenized CHUNK at a time."""
    id_parts: list[np.ndarray] = []
    type_parts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    chunk: list[str] = []

    def flush() -> None:
        ids, types = tok.encode(chunk)
        lengths.append(np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)))
        id_parts.append(np.fromiter((t for x in ids for t in x), dtype=np.int32))
        if types is not None:
            type_parts.append(np.fromiter((t for x in types for t in x), dtype=np.int8))
        chunk.clear()

    for text in texts:
        chunk.append(text)
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
        flush()
    lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int32)
    types = (np.concatenate(type_parts) if type_parts else np.zeros(0, np.int8)) if tok.token_type_ids else None
    return ids, offsets, types


def _as_tokenizer(tokenizer: str | Path | TextTokenizer | None, max_length: int | None,
                  token_type_ids: bool | None) -> TextTokenizer:
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    return load_tokenizer(tokenizer, max_length=max_length, token_type_ids=token_type_ids)


def _encode_targets(labels: list[Any], where: str) -> tuple[np.ndarray, list[str]]:
    labels = [int(v) if isinstance(v, np.integer) else v for v in labels]
    for i, v in enumerate(labels):
        if isinstance(v, bool) or not isinstance(v, (str, int, np.integer)):
            raise ConfigError(f"{where}: label {i} is {v!r}; labels must be strings or integers")
    return encode_labels(labels)


def text_dataset(
    texts: Sequence[str],
    labels: Sequence[Any] | None = None,
    *,
    tokenizer: str | Path | TextTokenizer,
    max_length: int | None = 128,
    token_type_ids: bool | None = None,
) -> TextDataset:
    """A `TextDataset` from in-memory strings (+ optional labels), tokenized with the tokenizer in
    a local Hugging Face folder (or an already loaded `TextTokenizer`)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ConfigError(f"text_dataset: texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ConfigError("text_dataset: texts is empty (an empty corpus cannot be trained or evaluated on)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ConfigError(f"text_dataset: texts[{i}] is a {type(t).__name__}, expected a string")
    targets, names = None, []
    if labels is not None:
        if len(labels) != len(texts):
            raise ConfigError(f"text_dataset: {len(texts)} texts but {len(labels)} labels")
        targets, names = _encode_targets(list(labels), "text_dataset")
    tok = _as_tokenizer(tokenizer, max_length, token_type_ids)
    ids, offsets, types = _tokenize(tok, iter(texts))
    return TextDataset(ids, offsets, pad_id=tok.pad_id, type_ids=types, targets=targets, class_names=names,
                       source=tok.describe())


def load_text(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    path: str | Path | Sequence[str | Path] | None = None,
    tokenizer: str | Path | None = None,
    format: str = "auto",
    text_field: str = "text",
    label_field: str | None = None,
    max_length: int | None = 128,
    delimiter: str | None = None,
    token_type_ids: bool | None = None,
    group_field: str | None = None,
) -> Splits:
    """Text from JSONL / CSV / .txt file(s) at `path`, tokenized with the local folder `tokenizer`.

    `format`: jsonl | csv | txt | auto (from the suffix: .jsonl/.ndjson, .csv/.tsv, .txt/.text).
    `text_field` / `label_field`: the JSONL key or CSV column of the text and of the label (no
    labels in .txt). `max_length`: tokens kept per sample (null: no truncation). `delimiter`:
    CSV separator (default ',' or tab for .tsv). `token_type_ids`: whether batches carry them
    (null: when the tokenizer produces them). `group_field`: a key / column naming each sample's
    group (a document, a module, a speaker): whole groups go to one split, so test groups are
    unseen in training. Unlabelled corpora have `num_classes` 0.
    """
    if path is None:
        raise ConfigError("text: pass path=<.jsonl, .csv or .txt file> (or a list of them)")
    if tokenizer is None:
        raise ConfigError("text: pass tokenizer=<local Hugging Face tokenizer folder>")
    paths = [Path(p).expanduser() for p in ([path] if isinstance(path, (str, Path)) else path)]
    if not paths:
        raise ConfigError("text: path is an empty list")
    formats = [format_of(p, format) for p in paths]
    for p in paths:
        if not p.is_file():
            raise InputFileError(f"{p}: text file not found")
    if label_field is not None and "txt" in formats:
        raise ConfigError("text: plain-text files have no labels; drop label_field or use JSONL / CSV")
    if group_field is not None and "txt" in formats:
        raise ConfigError("text: plain-text files have no fields; group_field needs JSONL / CSV")
    if labelled_fraction is not None and label_field is None:
        raise ConfigError("text: labelled_fraction needs labels (label_field=...)")
    tok = load_tokenizer(tokenizer, max_length=max_length, token_type_ids=token_type_ids)
    labels: list[Any] = []
    groups: list[Any] = []

    def samples() -> Iterator[str]:
        for p, fmt in zip(paths, formats, strict=True):
            if fmt == "txt":
                rows = read_txt(p)
            elif fmt == "jsonl":
                rows = read_jsonl(p, text_field, label_field, group_field)
            else:
                sep = delimiter if delimiter is not None else ("\t" if p.suffix.lower() == ".tsv" else ",")
                rows = read_csv(p, text_field, label_field, sep, group_field)
            for text, label, group in rows:
                labels.append(label)
                groups.append(group)
                yield text

    where = ", ".join(map(str, paths))
    return text_splits(samples(), tok, labels=labels if label_field is not None else None,
                       groups=groups if group_field is not None else None, name="text", where=where,
                       seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                       labelled_fraction=labelled_fraction,
                       info={"path": where, "format": ", ".join(sorted(set(formats)))})


def text_splits(
    texts: Iterator[str] | Sequence[str],
    tok: TextTokenizer,
    *,
    labels: list[Any] | None,
    groups: list[Any] | None,
    name: str,
    where: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    info: dict[str, Any] | None = None,
    train_only: int = 0,
) -> Splits:
    """Tokenize `texts` and split them into train / val / test (/ unlabelled) `TextDataset`s.

    `labels` / `groups` are filled while `texts` is consumed (a generator reading files) or given
    in full. Splits are stratified by label; with `groups`, whole groups go to one split.
    `train_only`: the last `train_only` texts are extra training text: they join the training
    split and take no part in the split (val / test are those of the other texts alone).
    """
    ids, offsets, types = _tokenize(tok, iter(texts))
    n = len(offsets) - 1
    if n == 0:
        raise InputFileError(f"{where}: no samples (every line is empty)")
    targets, names = (None, []) if labels is None else _encode_targets(labels, name)
    whole = TextDataset(ids, offsets, pad_id=tok.pad_id, type_ids=types, targets=targets, class_names=names,
                        source=tok.describe())
    y = np.zeros(n, np.int64) if targets is None else targets
    fractions = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                 "labelled_fraction": labelled_fraction}
    core = n - train_only
    if not 0 <= train_only < n:
        raise ConfigError(f"{where}: train_only={train_only} must leave texts to split (there are {n})")
    if groups is None:
        pos = split_positions(y[:core], name=name, **fractions)
    else:
        pos = group_split_positions(y[:core], [str(g) for g in groups[:core]], name=name, **fractions)
    if train_only:
        pos = dataclasses.replace(pos, train=np.concatenate([pos.train, np.arange(core, n)]))
    lengths = whole.lengths
    max_length = tok.max_length
    return Splits(
        name=name,
        train=whole.subset(pos.train),
        val=whole.subset(pos.val),
        test=whole.subset(pos.test),
        num_classes=len(names),
        input_shape=(),
        class_names=names,
        unlabelled=None if pos.unlabelled is None else whole.subset(pos.unlabelled).without_labels(),
        info={
            **(info or {}),
            "tokenizer": str(tok.folder), "max_length": max_length, "pad_id": tok.pad_id,
            "tokens": int(len(ids)), "mean_length": float(lengths.mean()),
            "at_max_length": int((lengths == max_length).sum()) if max_length else 0,
            "token_type_ids": tok.token_type_ids,
            **({} if groups is None else {"groups": len(set(map(str, groups))), "split_by": "group"}),
        },
    )


__all__ = ["FORMATS", "TextDataset", "load_text", "text_dataset", "text_splits"]
