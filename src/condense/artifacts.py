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
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, InputFileError
from condense.core.io import (
    OutsideFolderError,
    _fsync_dir,
    atomic_path,
    atomic_write_json,
    deletable,
    delete_inside,
    inside,
    read_json,
)
from condense.models.edits import replay_edits
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
            "edits": list(getattr(model, "condense_edits", []) or []),
            "condense_version": __version__,
            "torch_version": torch.__version__,
            **({"transformers_version": section["hf"]["transformers_version"]} if section else {}),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "files": {n: {"bytes": (staging / n).stat().st_size, "sha256": _sha256(staging / n)} for n in names},
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
            _fsync_dir(folder.parent)
            return
        except OSError:
            if not folder.is_dir():
                raise
    stale = sorted(_listed_files(folder) - set(names))
    _check_paths(folder, names, stale)  # before anything changes: no write or delete leaves the folder
    (folder / META_NAME).unlink(missing_ok=True)  # from here on the folder reads as incomplete
    _fsync_dir(folder)
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
        _fsync_dir(target.parent)
    for name in stale:
        delete_inside(folder, name)
    os.replace(staging / META_NAME, folder / META_NAME)
    _fsync_dir(folder)


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


def _safe_relative(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts


def _listed_files(folder: Path) -> set[str]:
    """Files a previous condense.json in `folder` lists (empty when there is none or it is unreadable)."""
    try:
        files = json.loads((folder / META_NAME).read_text(encoding="utf-8")).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return set()
    return {n for n in files if isinstance(n, str) and n and n != META_NAME} if isinstance(files, dict) else set()


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
    if p.suffix.lower() in _PICKLE_SUFFIXES and (p.is_file() or not p.exists()):
        if not p.exists():
            raise InputFileError(f"{p}: no such file")
        return _load_checkpoint(p, spec, trust_pickle, map_location)
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
    _verify_files(p, meta)
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
    model = _materialize(model, build, map_location)
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


# -- the weights file's header, checked before anything is allocated -------------------------------
#: safetensors' dtype codes
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
              torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64", torch.complex64: "C64"}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
#: bytes a model may hold beyond what its weights file stores (non-persistent buffers such as
#: transformers' position ids; a few KiB in practice)
ALLOC_MARGIN = 64 << 20
#: how much larger than its weights file a base architecture may be before its edits are replayed
#: (a 99.6 % reduction; pruning 90 % of an int8 model is 40x)
BASE_FACTOR = 256


def _dtype_code(dtype: torch.dtype) -> str:
    return _ST_DTYPES.get(dtype, str(dtype).removeprefix("torch."))


def read_header(weights: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """{tensor name: (dtype code, shape, bytes)} from a safetensors file's header, reading only the
    8-byte length and the JSON header (no tensor data). Offsets must lie inside the file."""
    bad = f"{weights}: not a readable safetensors file"
    size = weights.stat().st_size
    with open(weights, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(_MAX_HEADER, size - 8):
            raise InputFileError(f"{bad} (header length {n} does not fit a {size}-byte file)")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputFileError(f"{bad} (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise InputFileError(f"{bad} (header is not a mapping)")
    data = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...], int]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (isinstance(dtype, str) and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                  and type(start) is int and type(end) is int and 0 <= start <= end <= data)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise InputFileError(f"{bad} (bad header entry for tensor {name!r}: {str(entry)[:200]})")
        out[name] = (dtype, tuple(shape), end - start)
    return out


def _tensor_bytes(model: nn.Module) -> tuple[int, str, int]:
    """(bytes of all parameters and buffers, the largest one's name, its bytes); shared tensors once."""
    seen: set[int] = set()
    total, largest, most = 0, "", -1
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            n = t.numel() * t.element_size()
            total += n
            if n > most:
                largest, most = name, n
    return total, largest, most


def check_base_size(model: nn.Module, weights: Path) -> None:
    """Before the edit log is replayed: the base architecture (on the meta device) may be larger
    than the weights (pruning, quantization and low rank shrink it), but not by more than
    `BASE_FACTOR`; the replay's own bookkeeping (channel masks) grows with the base's size."""
    total, largest, most = _tensor_bytes(model)
    size = weights.stat().st_size
    if total > BASE_FACTOR * size + ALLOC_MARGIN:
        raise InputFileError(f"{weights}: the architecture in {META_NAME} needs {total:,} bytes of tensors before its "
                             f"edits ({largest!r} alone {most:,}), implausible for a {size:,}-byte weights file; "
                             "refused before allocating anything")


def check_against_header(model: nn.Module, header: dict[str, tuple[str, tuple[int, ...], int]], weights: Path,
                         *, hf: bool = False) -> None:
    """Every tensor of `model` (built on the meta device) against the weights file's header: the
    same names, shapes, dtypes and byte counts, and in all no more bytes than the file holds plus
    `ALLOC_MARGIN` (non-persistent buffers). An `InputFileError` names the file and the first
    mismatching tensor; nothing has been allocated yet."""
    file_info = from_hf_state(model, header) if hf else header
    own = {k: (_dtype_code(t.dtype), tuple(t.shape), t.numel() * t.element_size()) for k, t in model.state_dict().items()}
    _raise_on_mismatch({k: v[:2] for k, v in own.items()}, {k: v[:2] for k, v in file_info.items()}, str(weights))
    for k, (_, _, nbytes) in own.items():
        if nbytes != file_info[k][2]:
            raise InputFileError(f"{weights}: tensor {k!r} holds {file_info[k][2]} bytes, the architecture needs {nbytes}")
    total, largest, most = _tensor_bytes(model)
    size = weights.stat().st_size
    if total > size + ALLOC_MARGIN:
        raise InputFileError(f"{weights}: the architecture in {META_NAME} needs {total:,} bytes of tensors "
                             f"({largest!r} alone {most:,}), the weights file holds {size:,}; refused before "
                             "allocating anything")


def _raise_on_mismatch(own: dict[str, tuple[str, tuple[int, ...]]], file: dict[str, tuple[str, tuple[int, ...]]],
                       source: str) -> None:
    """One clear line when `file`'s {name: (dtype, shape)} does not fit the model's (see load_state_strict)."""
    missing = sorted(set(own) - set(file))
    unexpected = sorted(set(file) - set(own))
    common = [k for k in own if k in file]  # the model's order: the first mismatch is the first tensor
    wrong = [k for k in common if own[k][1] != file[k][1]]
    dtypes = [k for k in common if own[k][0] != file[k][0]]
    if missing or unexpected or wrong or dtypes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches, e.g. {k}: file {file[k][1]} vs model {own[k][1]}")
        if dtypes:
            k = dtypes[0]
            parts.append(f"{len(dtypes)} dtype mismatches, e.g. {k}: file {file[k][0]} vs model {own[k][0]}")
        raise InputFileError(f"{source}: weights do not fit the architecture ({'; '.join(parts)})")


def _materialize(model: nn.Module, build: Any, device: str | torch.device) -> nn.Module:
    """Real (uninitialised) storage for a meta-device model whose shapes passed the header check;
    `load_state_strict` then fills every persistent tensor. Non-persistent buffers (not in the
    weights file) are re-initialised by transformers for a Hugging Face model; any other model
    that has them, or that keeps tensors outside its parameters and buffers, is built again for
    real with `build` (the metadata already matched the weights)."""
    owners = [m for m in model.modules() if any(m._buffers.get(b) is not None for b in m._non_persistent_buffers_set)]
    if _stray_tensors(model) or (owners and not isinstance(model, HFModel)):
        return build().to(device)
    model.to_empty(device=device)
    if owners:
        unsaved = [t for m in owners for b, t in m._buffers.items() if t is not None and b in m._non_persistent_buffers_set]
        with torch.no_grad():
            for t in unsaved:  # a value no initialiser writes: what is still all sentinel was not re-initialised
                t.fill_(_sentinel(t.dtype))
            for m in owners:
                model.hf._init_weights(m)  # type: ignore[union-attr]
        if any(t.numel() and bool((t == _sentinel(t.dtype)).all()) for t in unsaved):
            return build().to(device)
    return model


def tied_parameters(model: nn.Module) -> list[list[str]]:
    """Names of the parameters that are one Parameter object held under several names (a tied LM
    head and word embedding), one list per shared Parameter."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def retie(model: nn.Module, ties: list[list[str]]) -> None:
    """Make every name of each group hold its first name's Parameter again."""
    for names in ties:
        first = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            (model.get_submodule(owner) if owner else model)._parameters[attr] = first


def _sentinel(dtype: torch.dtype) -> float | int | bool:
    if dtype.is_floating_point or dtype.is_complex:
        return float("inf")
    return True if dtype == torch.bool else torch.iinfo(dtype).min


def _stray_tensors(model: nn.Module) -> bool:
    """Whether a module keeps a tensor in a plain attribute (to_empty would leave it on meta)."""
    return any(isinstance(v, torch.Tensor) for m in model.modules() for k, v in vars(m).items()
               if k not in ("_parameters", "_buffers"))


def warn_nonfinite(state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Warn (naming the file and the first such tensor) when loaded weights hold NaN or Inf."""
    bad = [k for k, t in state.items() if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        warnings.warn(f"{source}: tensor {bad[0]!r}{more} holds non-finite values (NaN or Inf); the model's "
                      "outputs will be too", RuntimeWarning, stacklevel=3)


#: keys under which training scripts commonly nest the state_dict of a checkpoint
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_SPEC_HINT = ("name the code that builds its architecture: load(path, spec=ModelSpec('package.module:factory', "
              "{...})), or on the command line --model package.module:factory [--model-arg K=V]")


def _tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _state_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict a checkpoint holds (top level, or under one of `_STATE_KEYS`), else None."""
    if _tensor_mapping(obj):
        return obj
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if _tensor_mapping(obj.get(key)):
                return obj[key]
    return None


def _load_checkpoint(p: Path, spec: ModelSpec | None, trust_pickle: bool, map_location: Any) -> nn.Module:
    """A `.pt` file: a state_dict into `spec`'s architecture, or a trusted pickled module (see `load`)."""
    import pickle

    try:  # torch's weights-only unpickler: tensors and plain containers only, never code
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        obj = None  # holds more than weights (a pickled module): only with trust_pickle
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise InputFileError(f"{p}: cannot read this checkpoint, truncated or not a torch file "
                             f"({str(e).splitlines()[0]})") from None
    state = _state_of(obj)
    if state is None and obj is not None:
        raise InputFileError(f"{p}: holds a {type(obj).__name__} without a state_dict of tensors; expected a "
                             "state_dict or a whole torch.nn.Module")
    if state is None:
        if not trust_pickle:
            raise InputFileError(
                f"{p}: refusing to load a pickle checkpoint (it can run arbitrary code); "
                "pass trust_pickle=True / --trust-pickle only if you trust its source, or save its "
                "state_dict() instead and name the architecture (--model package.module:factory)"
            )
        try:
            module = torch.load(p, map_location=map_location, weights_only=False)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, AttributeError, ImportError) as e:
            raise InputFileError(f"{p}: cannot unpickle this checkpoint ({type(e).__name__}: {e})") from None
        state = _state_of(module)
        if not isinstance(module, nn.Module) and state is None:
            raise InputFileError(f"{p}: the pickle holds a {type(module).__name__}, expected a whole torch.nn.Module")
        if isinstance(module, nn.Module):
            if spec is None:
                return module
            return _into_spec(spec, module.state_dict(), p, module)
    if spec is None:
        raise ConfigError(f"{p}: holds a state_dict (weights only, no architecture); {_SPEC_HINT}")
    return _into_spec(spec, state, p, None)


def _into_spec(spec: ModelSpec, state: dict[str, torch.Tensor], p: Path, module: nn.Module | None) -> nn.Module:
    """Build `spec`, replay the pickled `module`'s recorded edits (if any), load `state` strictly."""
    model = spec.build()
    edits = list(getattr(module, "condense_edits", None) or [])
    if edits:
        replay_edits(model, edits)
    load_state_strict(model, state, source=f"{p} (into {spec.name})")
    if module is not None and signature_of(module) != DEFAULT_SIGNATURE:
        set_signature(model, signature_of(module))
    model.eval()
    return model


def _verify_files(folder: Path, meta: dict[str, Any]) -> None:
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
        if "sha256" in expected and _sha256(f) != expected["sha256"]:
            raise InputFileError(f"{f}: contents do not match the sha256 recorded in {META_NAME} (corrupt file)")


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """load_state_dict(strict=True) with one clear line on mismatch (names the file and keys)."""
    def info(d: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {k: (str(v.dtype), tuple(v.shape)) for k, v in d.items()}

    _raise_on_mismatch(info(model.state_dict()), info(state), source)
    model.load_state_dict(state, strict=True)


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of an artifact folder (all files) or a single file."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
