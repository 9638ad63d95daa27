"""Model artifacts: weights in safetensors, everything else as JSON data. Never pickles.

An artifact folder holds `model.safetensors` and `condense.json` (architecture spec, structural
edit log, input signature when not the default, toolkit and torch versions, metrics, recipe,
size + sha256 of every file). `condense.json` is written last, so a folder without it is
incomplete and `load()` refuses it. `load()` checks every listed file, rebuilds the base
architecture from the spec, replays the edit log, and loads the weights strictly.

condense.json is untrusted data (docs/security.md): a `package.module:factory` it names is refused
before anything is imported unless the caller passes `trust_code=True` (`--trust-code`) or the
factory is registered in `MODELS`; the architecture is first built and edited on the meta device
and every tensor's shape, dtype and byte count is compared with the safetensors header, so the
metadata cannot make `load()` allocate more than the weights file holds; loaded weights that hold
NaN or Inf are named in a warning.

A Hugging Face model (`build_model("hf:<folder>")`) is saved in transformers' own layout too:
config.json, model.safetensors under transformers' key names, and the source folder's tokenizer
and sentence-transformers files, so `transformers.AutoModel.from_pretrained(folder)` opens it
(`condense.json["hf"]["transformers_loadable"]` says whether structural edits changed shapes
beyond what config.json describes). `load()` rebuilds it from the artifact's own config.json.

This module holds the two verbs (`save`, which publishes the folder, and `load`); the parts they
use: `layout` (file names, hashes, reading condense.json), `header` (the weights file checked
against the architecture before anything is allocated), `materialize` (meta tensors to real ones,
tied parameters) and `checkpoint` (torch `.pt` files).
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.artifacts.checkpoint import PICKLE_SUFFIXES, load_checkpoint
from condense.artifacts.header import (
    ALLOC_MARGIN,
    BASE_FACTOR,
    check_against_header,
    check_base_size,
    load_state_strict,
    read_header,
    warn_nonfinite,
)
from condense.artifacts.layout import (
    FORMAT,
    META_NAME,
    WEIGHTS_NAME,
    artifact_bytes,
    file_sha256,
    listed_files,
    read_metadata,
    verify_files,
)
from condense.artifacts.materialize import materialize_model, retie, tied_parameters
from condense.core.errors import ConfigError, InputFileError
from condense.core.io import (
    OutsideFolderError,
    atomic_path,
    atomic_write_json,
    deletable,
    delete_inside,
    fsync_dir,
    inside,
)
from condense.models.edits import edit_log, replay_edits
from condense.models.hf import (
    HFModel,
    artifact_info,
    build_from_artifact,
    from_hf_state,
    to_hf_state,
    transformers_loadable,
    write_side_files,
)
from condense.models.registry import HF_PREFIX, ModelSpec, model_spec, require_trusted
from condense.models.signature import DEFAULT_SIGNATURE, InputSignature, set_signature, signature_of
from condense.version import __version__

__all__ = [
    "ALLOC_MARGIN",
    "BASE_FACTOR",
    "FORMAT",
    "META_NAME",
    "WEIGHTS_NAME",
    "artifact_bytes",
    "check_against_header",
    "check_base_size",
    "load",
    "load_state_strict",
    "read_header",
    "read_metadata",
    "retie",
    "save",
    "tied_parameters",
    "warn_nonfinite",
]


def _check_storable(model: nn.Module) -> None:
    """A state entry that is not a tensor (torch's dynamic-int8 `DynamicQuantizedLinear` keeps packed
    C++ weights and a dtype) cannot be written as safetensors: a `ConfigError` names the layers."""
    state = model.state_dict()
    packed = sorted({k.rsplit(".", 2)[0] for k, v in state.items() if not isinstance(v, torch.Tensor)})
    if packed:
        shown = ", ".join(packed[:4]) + (f" and {len(packed) - 4} more" if len(packed) > 4 else "")
        raise ConfigError(f"save: {shown} hold packed (not tensor) state, as torch's dynamic-int8 layers do; safetensors "
                          "cannot store it. Save the float model and quantize after load (or deploy the dynamic "
                          "int8 ONNX file, `condense.quantize.dynamic.export_dynamic_int8`); nothing was written")


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
    Every file is first written (and fsynced) into a temporary folder next to `path`, then moved
    in: a new (or empty) folder by one rename; an existing folder file by file, after removing
    its `condense.json`, which goes in last. A crash therefore never leaves a folder `load`
    accepts with a mixture of old and new files. Files listed by a previous `condense.json` and
    not written again are removed; other files in the folder (e.g. `model.onnx`) are kept. Every
    write and delete resolves inside the folder (symlinks followed, never deleted through), or the
    save is refused with `OutsideFolderError` before the folder changes.
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
    _check_storable(model)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputFileError(f"{folder}: exists and is not a folder; an artifact is a folder")
    where = folder.absolute()  # save(model, ".") stages next to the folder, not inside it
    where.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{where.name}.", suffix=".tmp", dir=where.parent))
    try:
        state = _plain_state(model)
        names: list[str] = []
        section: dict[str, Any] = {}
        if isinstance(model, HFModel):  # Hugging Face layout: transformers opens the folder directly
            state = to_hf_state(state)
            names += write_side_files(model, staging)
            section["hf"] = artifact_info(model, transformers_loadable(model, state))
        with atomic_path(staging / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        names.insert(0, WEIGHTS_NAME)
        sig = signature_of(model)
        meta = {
            "format": FORMAT,
            "architecture": spec.to_dict(),
            "edits": list(edit_log(model)),
            "condense_version": __version__,
            "torch_version": torch.__version__,
            **({"transformers_version": section["hf"]["transformers_version"]} if section else {}),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "files": {n: {"bytes": (staging / n).stat().st_size, "sha256": file_sha256(staging / n)} for n in names},
            **({"signature": sig.to_dict()} if sig != DEFAULT_SIGNATURE else {}),
            **section,
            "metrics": metrics or {},
            "recipe": recipe,
            **(extra or {}),
        }
        atomic_write_json(staging / META_NAME, meta)
        _publish(staging, folder, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _dir_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


_DIR_MODE = _dir_mode()  # what mkdir would give; mkdtemp alone gives 0700


def _publish(staging: Path, folder: Path, names: list[str]) -> None:
    """Move the files of `staging` (condense.json last) into `folder` (see `save`)."""
    os.chmod(staging, _DIR_MODE)
    if not folder.is_symlink() and (not folder.exists() or not any(folder.iterdir())):
        try:
            os.rename(staging, folder)  # atomic; replaces an empty folder too
            fsync_dir(folder.parent)
            return
        except OSError:
            if not folder.is_dir():
                raise
    stale = sorted(listed_files(folder) - set(names))
    _check_paths(folder, names, stale)  # before anything changes: no write or delete leaves the folder
    (folder / META_NAME).unlink(missing_ok=True)  # from here on the folder reads as incomplete
    fsync_dir(folder)
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
        fsync_dir(target.parent)
    for name in stale:
        delete_inside(folder, name)
    os.replace(staging / META_NAME, folder / META_NAME)
    fsync_dir(folder)


def _check_paths(folder: Path, names: list[str], stale: list[str]) -> None:
    """Every file `save` writes (`names`) and deletes (`stale`, listed by the old condense.json)
    resolves inside `folder`, symlinks followed; a delete never goes through a symlink. Else
    `OutsideFolderError` (exit 3), raised before the folder changes."""
    for name in [*names, META_NAME]:
        inside(folder, (folder / name).parent)
    for name in stale:
        try:
            deletable(folder, name)
        except OutsideFolderError as e:
            raise OutsideFolderError(f"{folder / META_NAME} lists {name!r} as one of its files; {e}") from None


def _parametrized(model: nn.Module):
    for m in model.modules():
        if getattr(m, "parametrizations", None):
            yield m


def load(
    path: str | Path,
    *,
    trust_pickle: bool = False,
    trust_code: bool = False,
    map_location: str | torch.device = "cpu",
    spec: ModelSpec | None = None,
) -> nn.Module:
    """Rebuild a saved model: architecture from its spec, edits replayed, weights loaded strictly.

    An artifact folder's `condense.json` is data from wherever the folder came from: a
    `package.module:factory` it names is imported only with `trust_code=True` (or when that name is
    registered in `condense.models.MODELS`), else `UntrustedCodeError` (exit 3) before any import.
    The architecture is built on the meta device and checked against the safetensors header
    before anything real is allocated (`InputFileError` on a mismatch).

    A torch checkpoint file (`.pt`, `.pth`, ...) holds either a state_dict or a whole pickled
    module. A state_dict is read with torch's weights-only unpickler (no code runs) into the
    architecture `spec` builds (`ModelSpec("package.module:factory", kwargs)` or a zoo name; the
    caller's own choice), strictly. A whole module is unpickled only with `trust_pickle=True`,
    because that runs arbitrary code from the file; with `spec` its weights are loaded strictly into
    the built architecture, so the model carries a spec and `save()` can write it as an artifact.
    """
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES and (p.is_file() or not p.exists()):
        if not p.exists():
            raise InputFileError(f"{p}: no such file")
        return load_checkpoint(p, spec, trust_pickle, map_location)
    if spec is not None:
        raise ConfigError(f"{p}: an artifact records its own architecture; a spec (--model) is for a .pt checkpoint")
    meta = read_metadata(p)
    meta_path = p / META_NAME
    try:
        spec = ModelSpec.from_dict(meta["architecture"])
    except ConfigError as e:
        raise InputFileError(f"{meta_path}: bad 'architecture' ({e})") from None
    require_trusted(spec.name, trust_code=trust_code, source=str(meta_path))  # before any import
    weights = p / WEIGHTS_NAME
    if not weights.exists():
        raise InputFileError(f"{weights}: missing")
    verify_files(p, meta)
    header = read_header(weights)
    edits = meta.get("edits", [])
    if not isinstance(edits, list) or not all(isinstance(e, dict) and isinstance(e.get("kind"), str)
                                              and isinstance(e.get("params", {}), dict) for e in edits):
        raise InputFileError(f"{meta_path}: 'edits' must be a list of {{kind, params}} mappings")
    hf = spec.name.startswith(HF_PREFIX)

    def build() -> nn.Module:
        # the metadata names what to build: a name or edit it cannot resolve is a bad file, not a bad config
        try:  # a Hugging Face model is rebuilt from the artifact's own config.json: its source may be gone
            model = build_from_artifact(p, spec.kwargs) if hf else spec.build(trust_code=True)
            check_base_size(model, weights)  # the edits below may shrink it, within reason
            return replay_edits(model, edits)
        except InputFileError:
            raise
        except (ConfigError, TypeError, KeyError, ValueError, AttributeError, IndexError, RuntimeError,
                NotImplementedError) as e:
            raise InputFileError(f"{meta_path}: cannot rebuild the model it describes ({e})") from None

    with torch.device("meta"):  # shapes only: nothing the metadata describes is allocated yet
        model = build()
    check_against_header(model, header, weights, hf=hf)
    ties = tied_parameters(model)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputFileError(f"{weights}: not a readable safetensors file ({e})") from None
    model = materialize_model(model, build, map_location)
    if hf:
        state = from_hf_state(model, state)
    load_state_strict(model, state, source=str(weights))
    retie(model, ties)  # materializing meta tensors makes one Parameter per holder; the built model shared them
    warn_nonfinite(state, weights)
    model.condense_spec = spec  # type: ignore[assignment]
    if meta.get("signature") is not None:
        try:
            set_signature(model, InputSignature.from_dict(meta["signature"]))
        except ConfigError as e:
            raise InputFileError(f"{meta_path}: bad 'signature' ({e})") from None
    model.eval()
    return model
