"""Model artifacts: weights in safetensors, everything else as JSON data. Never pickles.

An artifact folder holds `model.safetensors` and `condense.json` (architecture spec, structural
edit log, toolkit and torch versions, metrics, recipe, file hashes). `condense.json` is written
last, so a folder without it is incomplete and `load()` refuses it. `load()` rebuilds the base
architecture from the spec, replays the edit log, and loads the weights strictly.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense import __version__
from condense.core.errors import ConfigError, InputFileError
from condense.core.io import atomic_path, atomic_write_json, read_json
from condense.models.edits import replay_edits
from condense.models.registry import ModelSpec, model_spec

WEIGHTS_NAME = "model.safetensors"
META_NAME = "condense.json"
FORMAT = "condense-artifact/1"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with every tensor contiguous and owning its memory (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save(
    model: nn.Module,
    path: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    spec: ModelSpec | None = None,
) -> Path:
    """Write `model` to the folder `path` (created); return the folder.

    The model must carry an architecture spec (models built by `build_model`, or pass `spec`).
    """
    from safetensors.torch import save_file

    spec = spec or model_spec(model)
    if spec is None:
        raise ConfigError(
            "save(): the model has no architecture spec; build it with condense.build_model(...) "
            "or pass spec=ModelSpec('package.module:factory', kwargs)"
        )
    if any(True for _ in _parametrized(model)):
        raise ConfigError(
            "save(): the model still has parametrizations (e.g. pruning masks); call "
            "`from condense.prune import make_permanent; make_permanent(model)` first so the saved weights are the real ones"
        )
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    (folder / META_NAME).unlink(missing_ok=True)  # written last again below: until then, incomplete
    with atomic_path(weights) as tmp:
        save_file(_plain_state(model), str(tmp), metadata={"format": "pt"})
    meta = {
        "format": FORMAT,
        "architecture": spec.to_dict(),
        "edits": list(getattr(model, "condense_edits", []) or []),
        "condense_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "files": {WEIGHTS_NAME: {"bytes": weights.stat().st_size, "sha256": _sha256(weights)}},
        "metrics": metrics or {},
        "recipe": recipe,
        **(extra or {}),
    }
    atomic_write_json(folder / META_NAME, meta)
    return folder


def _parametrized(model: nn.Module):
    for m in model.modules():
        if getattr(m, "parametrizations", None):
            yield m


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


def load(path: str | Path, *, trust_pickle: bool = False, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model: architecture from its spec, edits replayed, weights loaded strictly.

    A pickle file (`.pt`, `.pth`, ...) is refused unless `trust_pickle=True`, because unpickling
    runs arbitrary code from the file.
    """
    p = Path(path)
    if p.suffix.lower() in _PICKLE_SUFFIXES and (p.is_file() or not p.exists()):
        if not p.exists():
            raise InputFileError(f"{p}: no such file")
        if not trust_pickle:
            raise InputFileError(
                f"{p}: refusing to load a pickle checkpoint (it can run arbitrary code); "
                "pass trust_pickle=True / --trust-pickle only if you trust its source"
            )
        obj = torch.load(p, map_location=map_location, weights_only=False)
        if not isinstance(obj, nn.Module):
            raise InputFileError(f"{p}: the pickle holds a {type(obj).__name__}, expected a whole torch.nn.Module")
        return obj
    meta = read_metadata(p)
    weights = p / WEIGHTS_NAME
    if not weights.exists():
        raise InputFileError(f"{weights}: missing")
    expected = meta.get("files", {}).get(WEIGHTS_NAME, {})
    size = weights.stat().st_size
    if "bytes" in expected and size != expected["bytes"]:
        raise InputFileError(f"{weights}: truncated or replaced ({size} bytes, metadata says {expected['bytes']})")
    if "sha256" in expected and _sha256(weights) != expected["sha256"]:
        raise InputFileError(f"{weights}: contents do not match the sha256 recorded in {META_NAME} (corrupt file)")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputFileError(f"{weights}: not a readable safetensors file ({e})") from None
    spec = ModelSpec.from_dict(meta["architecture"])
    register_edit_handlers()
    model = spec.build()
    replay_edits(model, meta.get("edits", []))
    load_state_strict(model, state, source=str(weights))
    model.condense_spec = spec  # type: ignore[assignment]
    model.eval()
    return model


def register_edit_handlers() -> None:
    """Import the packages whose structural edits `load()` may replay (they register in EDITS)."""
    import condense.prune  # noqa: F401  prune_channels, prune_masks, prune_unmask
    import condense.quantize  # noqa: F401  quantize_static, weight_only, qat, ...


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """load_state_dict(strict=True) with one clear line on mismatch (names the file and keys)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches, e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise InputFileError(f"{source}: weights do not fit the architecture ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of an artifact folder (all files) or a single file."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
