"""The weights file checked before anything is allocated: safetensors' header read without its
tensor data, the meta-device architecture compared with it (names, shapes, dtypes, bytes), the
strict load with one clear line on a mismatch, and a warning for weights that hold NaN or Inf."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from condense.artifacts.layout import META_NAME
from condense.core.errors import InputFileError
from condense.models.hf import from_hf_state

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


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """load_state_dict(strict=True) with one clear line on mismatch (names the file and keys)."""
    def info(d: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {k: (str(v.dtype), tuple(v.shape)) for k, v in d.items()}

    _raise_on_mismatch(info(model.state_dict()), info(state), source)
    model.load_state_dict(state, strict=True)


def warn_nonfinite(state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Warn (naming the file and the first such tensor) when loaded weights hold NaN or Inf."""
    bad = [k for k, t in state.items() if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        warnings.warn(f"{source}: tensor {bad[0]!r}{more} holds non-finite values (NaN or Inf); the model's "
                      "outputs will be too", RuntimeWarning, stacklevel=3)
