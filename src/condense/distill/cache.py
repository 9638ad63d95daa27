"""Teacher-output cache: compute teacher logits (and tapped features) once, reuse them.

Outputs are stored on disk as NumPy shards (`<key>-<shard>.npy`) that are memory-mapped when read,
keyed by each sample's stable dataset index, with a `cache.json` holding the fingerprint of the
teachers (weights + architecture) and of the data, written last. A cache whose fingerprint does
not match is refused with a clear error (never silently reused); without a folder the cache
lives in memory for one run.

Per-token features of text batches (`(B, T, D)` hidden states or attention projections, for
`hidden_state` / `minilm` / `fitnet` on transformer layers) are zero-padded on the token axis to
the longest sample seen; the per-token losses cut them back to each training batch's length and
ignore the padding through the batch's `attention_mask`. They take `N x T x D` floats per tapped
module (all-MiniLM-L6-v2 at 64 tokens: ~98 KB per sample and module), so for a large transfer set
give a `cache_dir` (memory-mapped shards) or set `cache: off` (the teacher then runs live).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.errors import ConfigError, InputFileError
from condense.core.io import atomic_path, atomic_write_json, read_json
from condense.core.taps import FeatureTap
from condense.data.loader import as_source
from condense.export.onnx import output_tensor
from condense.models.signature import batch_to, call_model
from condense.train import distributed as dist

SHARD = 4096
FORMAT = "condense-teacher-cache/1"


def module_fingerprint(model: nn.Module) -> str:
    """Hash of a module's architecture (repr) and every tensor in its state_dict."""
    h = hashlib.sha256(repr(model).encode())
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class TeacherCache:
    """Per-sample teacher outputs: `lookup(index) -> {"logits/0": ..., "feat/0/layer": ...}`."""

    def __init__(self, arrays: dict[str, list[np.ndarray]], indices: np.ndarray, folder: Path | None = None) -> None:
        order = np.argsort(indices)
        self.sorted_indices = indices[order]
        self._order = order
        self.arrays = arrays
        self.folder = folder

    @property
    def keys(self) -> list[str]:
        return list(self.arrays)

    def lookup(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = index.detach().cpu().numpy()
        n = len(self.sorted_indices)
        pos = np.minimum(np.searchsorted(self.sorted_indices, idx), n - 1)
        bad = self.sorted_indices[pos] != idx
        if bad.any():
            where = f" {self.folder}" if self.folder else ""
            raise InputFileError(f"teacher cache{where}: no entry for sample indices {idx[bad][:5].tolist()}")
        rows = self._order[pos]
        return {k: torch.from_numpy(_gather(shards, rows)) for k, shards in self.arrays.items()}

    @classmethod
    def build(
        cls,
        teachers: Sequence[nn.Module],
        data: Any,
        feature_layers: Sequence[str] = (),
        feature_teacher: int = 0,
        *,
        folder: str | Path | None = None,
        device: torch.device | None = None,
        batch_size: int = 512,
    ) -> TeacherCache:
        """Load a matching cache from `folder`, or compute it (and write it there).

        `data`: anything `condense.data.loader.as_source` takes; each sample is keyed by its
        batch `index` (its dataset position or ArrayDataset id). Under torchrun with a `folder`,
        rank 0 computes and writes the cache and the other ranks open it after a barrier, so the
        teachers run over the data once; without a folder every rank computes it in memory.
        """
        device = device or torch.device("cpu")
        source = as_source(data)
        fp = {
            "format": FORMAT,
            "teachers": [module_fingerprint(t) for t in teachers],
            "data": source.fingerprint(),
            "features": list(feature_layers),
            "feature_teacher": feature_teacher,
        }
        if folder is not None:
            dist.ensure_initialized(device.type)  # a no-op in a plain run
            meta_path = Path(folder) / "cache.json"
            if dist.is_main() and not meta_path.exists():
                arrays, indices = cls._compute(teachers, source, feature_layers, feature_teacher, device, batch_size)
                cls._write(Path(folder), fp, arrays, indices)
            dist.barrier()  # the other ranks open what rank 0 wrote
            return cls._open(Path(folder), fp)
        arrays, indices = cls._compute(teachers, source, feature_layers, feature_teacher, device, batch_size)
        return cls({k: [a] for k, a in arrays.items()}, indices)

    @staticmethod
    def _compute(teachers, source, feature_layers, feature_teacher, device, batch_size) -> tuple[dict[str, np.ndarray], np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        ids: list[np.ndarray] = []
        taps = [FeatureTap(t, list(feature_layers), detach=True) if i == feature_teacher and feature_layers else None
                for i, t in enumerate(teachers)]
        try:
            with torch.inference_mode():
                for batch in source.batches(batch_size):
                    if "index" not in batch:
                        raise ConfigError("the teacher cache keys outputs by sample id, but the batches carry no "
                                          "'index' (a DataLoader with a shuffling sampler gives none); pass the "
                                          "Dataset itself, or set cache: off")
                    ids.append(batch["index"].numpy().astype(np.int64))
                    x = batch_to(batch, device)
                    for i, t in enumerate(teachers):
                        t.eval()
                        logits = output_tensor(call_model(t, x))
                        out.setdefault(f"logits/{i}", []).append(logits.float().cpu().numpy())
                        if taps[i] is not None:
                            for name in feature_layers:
                                out.setdefault(f"feat/{i}/{name}", []).append(taps[i][name].float().cpu().numpy())
        finally:
            for tap in taps:
                if tap is not None:
                    tap.remove()
        indices = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        if len(np.unique(indices)) != len(indices):
            raise ConfigError("the teacher cache keys outputs by sample id, but the data's ids are not unique")
        return {k: _concat(v) for k, v in out.items()}, indices

    @classmethod
    def _write(cls, folder: Path, fp: dict[str, Any], arrays: dict[str, np.ndarray], indices: np.ndarray) -> TeacherCache:
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, list[str]] = {}
        for i, (key, arr) in enumerate(arrays.items()):
            files[key] = []
            for s, start in enumerate(range(0, len(arr), SHARD)):
                name = f"t{i:02d}-{s:04d}.npy"
                with atomic_path(folder / name) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, arr[start : start + SHARD])
                files[key].append(name)
        with atomic_path(folder / "indices.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, indices)
        atomic_write_json(folder / "cache.json", {**fp, "files": files, "n": int(len(indices))})
        return cls._open(folder, fp)

    @classmethod
    def _open(cls, folder: Path, fp: dict[str, Any]) -> TeacherCache:
        meta_path = folder / "cache.json"
        meta = read_json(meta_path, "teacher cache metadata")
        for key in ("format", "teachers", "data", "features", "feature_teacher"):
            if meta.get(key) != fp[key]:
                what = {"teachers": "another teacher", "data": "other data", "features": "other feature taps"}.get(key, f"another {key}")
                raise InputFileError(
                    f"{meta_path}: this teacher cache was built for {what} ({key}: {meta.get(key)!r}, "
                    f"now {fp[key]!r}); delete the folder or point cache_dir elsewhere"
                )
        try:
            indices = np.load(folder / "indices.npy")
            arrays = {}
            for key, names in meta["files"].items():
                arrays[key] = [np.load(folder / n, mmap_mode="r") for n in names]
        except (OSError, ValueError) as e:
            raise InputFileError(f"{folder}: teacher cache shard unreadable ({e})") from None
        if any(sum(len(a) for a in shards) != len(indices) for shards in arrays.values()):
            raise InputFileError(f"{folder}: teacher cache shards disagree with indices.npy in length")
        return cls(arrays, indices.astype(np.int64), folder)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """Per-batch outputs into one array; per-token outputs of batches padded to different lengths
    are zero-padded on axis 1 to the longest."""
    if len({p.shape[1:] for p in parts}) <= 1:
        return np.concatenate(parts)
    longest = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, [(0, 0), (0, longest - p.shape[1])] + [(0, 0)] * (p.ndim - 2)) for p in parts])


def _gather(shards: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Rows from a list of equal-sized shards (all but the last hold SHARD rows; only the needed rows are read)."""
    if len(shards) == 1:
        return np.ascontiguousarray(shards[0][rows])
    size = len(shards[0])
    out = np.empty((len(rows), *shards[0].shape[1:]), dtype=shards[0].dtype)
    for s in np.unique(rows // size):
        sel = rows // size == s
        out[sel] = shards[s][rows[sel] - s * size]
    return out
