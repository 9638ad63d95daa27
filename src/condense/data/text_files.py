"""Reading text files line by line for `condense.data.text`: JSON lines, CSV / TSV and plain text,
each record as (text, label, group), with errors that name the file, the line and the field.
Lines are decoded as UTF-8 one at a time, so an undecodable byte is reported with its line."""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from condense.core.errors import ConfigError, InputFileError, did_you_mean

FORMATS = ("jsonl", "csv", "txt")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".txt": "txt", ".text": "txt"}


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded as UTF-8 one line at a time, so an undecodable
    byte is reported with its line (a UTF-8 multi-byte character never contains a newline byte)."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputFileError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                     f"{e.start + 1}); re-encode the file as UTF-8") from None
            yield n, (text.removeprefix("\ufeff") if n == 1 else text)


def read_txt(path: Path) -> Iterator[tuple[str, Any, Any]]:
    for _, line in _lines(path):
        if line.strip():
            yield line.strip(), None, None


def json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-empty line of a JSON-lines file; a line that is not a
    JSON object is an InputFileError naming the file and line."""
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputFileError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise InputFileError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def read_jsonl(path: Path, text_field: str, label_field: str | None,
               group_field: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    for n, obj in json_objects(path):
        for key in (text_field, label_field, group_field):
            if key is not None and key not in obj:
                raise InputFileError(f"{path}:{n}: no field {key!r}{did_you_mean(key, list(obj))}; "
                                     f"fields: {', '.join(obj) or 'none'}")
        text = obj[text_field]
        if not isinstance(text, str):
            raise InputFileError(f"{path}:{n}: field {text_field!r} must be a string, got {type(text).__name__}")
        label = None if label_field is None else obj[label_field]
        if label_field is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
            raise InputFileError(f"{path}:{n}: field {label_field!r} must be a string or an integer, got {label!r}")
        group = None if group_field is None else obj[group_field]
        if group_field is not None and (isinstance(group, bool) or not isinstance(group, (str, int))):
            raise InputFileError(f"{path}:{n}: field {group_field!r} must be a string or an integer, got {group!r}")
        yield text, label, group


def read_csv(path: Path, text_field: str, label_field: str | None, delimiter: str,
              group_field: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    lines = _lines(path)
    line_no = 0

    def texts() -> Iterator[str]:
        nonlocal line_no
        for line_no, text in lines:  # noqa: B007 (line_no is read by the caller between rows)
            yield text

    try:
        reader = csv.reader(texts(), delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise InputFileError(f"{path}: empty file (expected a header row naming the columns)")
        header = [h.strip() for h in header]
        for key in (text_field, label_field, group_field):
            if key is not None and key not in header:
                raise InputFileError(f"{path}: no column {key!r}{did_you_mean(key, header)}; "
                                     f"columns: {', '.join(header)}")
        t_at = header.index(text_field)
        l_at = None if label_field is None else header.index(label_field)
        g_at = None if group_field is None else header.index(group_field)
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise InputFileError(f"{path}:{line_no}: expected {len(header)} fields, got {len(row)}")
            yield (row[t_at], None if l_at is None else row[l_at].strip(),
                   None if g_at is None else row[g_at].strip())
    except csv.Error as e:
        raise InputFileError(f"{path}:{line_no}: malformed CSV ({e})") from None


def format_of(path: Path, format: str) -> str:
    if format != "auto":
        if format not in FORMATS:
            raise ConfigError(f"text: unknown format {format!r}{did_you_mean(format, FORMATS)}; "
                              f"expected one of {', '.join(FORMATS)} (or 'auto', from the file suffix)")
        return format
    found = SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise ConfigError(f"{path}: unknown format for suffix {path.suffix!r}; name it with format="
                          f"{'|'.join(FORMATS)} (auto knows {', '.join(sorted(SUFFIX_FORMATS))})")
    return found


__all__ = ["FORMATS", "SUFFIX_FORMATS", "format_of", "json_objects", "read_csv", "read_jsonl", "read_txt"]
