"""The artifact folder's layout: its file names and format tag, the sha256 of each file, and
reading and checking `condense.json` (every file it lists present with its recorded size and hash)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from condense.core.errors import InputFileError
from condense.core.io import read_json

WEIGHTS_NAME = "model.safetensors"
META_NAME = "condense.json"
FORMAT = "condense-artifact/1"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_relative(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts


def listed_files(folder: Path) -> set[str]:
    """Files a previous condense.json in `folder` lists (empty when there is none or it is unreadable)."""
    try:
        files = json.loads((folder / META_NAME).read_text(encoding="utf-8")).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return set()
    return {n for n in files if isinstance(n, str) and n and n != META_NAME} if isinstance(files, dict) else set()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read and check `condense.json` of an artifact folder."""
    folder = Path(path)
    if not folder.exists():
        raise InputFileError(f"{folder}: no such artifact folder")
    if not folder.is_dir():
        raise InputFileError(f"{folder}: expected an artifact folder holding {META_NAME} and {WEIGHTS_NAME}")
    meta_path = folder / META_NAME
    if not meta_path.exists():
        raise InputFileError(f"{meta_path}: missing (the artifact is incomplete or not a condense artifact)")
    meta = read_json(meta_path, "artifact metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputFileError(f"{meta_path}: expected format {FORMAT!r}, got {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if "architecture" not in meta:
        raise InputFileError(f"{meta_path}: no 'architecture' field")
    return meta


def verify_files(folder: Path, meta: dict[str, Any]) -> None:
    """Every file condense.json lists exists with its recorded size and sha256."""
    files = meta.get("files") or {}
    if not isinstance(files, dict):
        raise InputFileError(f"{folder / META_NAME}: 'files' must map file names to sizes and hashes")
    for name in sorted(files, key=lambda n: n != WEIGHTS_NAME):  # the weights first
        expected = files[name] if isinstance(files[name], dict) else {}
        f = folder / name
        if not _safe_relative(str(name)):
            raise InputFileError(f"{folder / META_NAME}: file name {name!r} points outside the artifact")
        if not f.is_file():
            raise InputFileError(f"{f}: missing (listed in {META_NAME})")
        size = f.stat().st_size
        if "bytes" in expected and size != expected["bytes"]:
            raise InputFileError(f"{f}: truncated or replaced ({size} bytes, metadata says {expected['bytes']})")
        if "sha256" in expected and file_sha256(f) != expected["sha256"]:
            raise InputFileError(f"{f}: contents do not match the sha256 recorded in {META_NAME} (corrupt file)")


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of an artifact folder (all files) or a single file."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
