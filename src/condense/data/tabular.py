"""Tabular sources: CSV, JSON lines and scikit-learn's bundled breast-cancer data.

Every column other than the label is a numeric feature; a value that is not a finite number is
an error naming the file, line and column (silently turning it into NaN would poison the
standardization of every sample). String labels become ints in sorted order.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from condense.core.errors import ConfigError, InputFileError, did_you_mean
from condense.data.base import Splits, make_splits
from condense.data.text_files import json_objects


def encode_labels(raw: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """Labels -> (int64 ids, class names). Non-negative ints stay as they are; anything else
    (strings, negative ints) is mapped to 0..K-1 in sorted order."""
    ints: list[int] = []
    for v in raw:
        if isinstance(v, bool):
            break
        if isinstance(v, int):
            ints.append(v)
            continue
        if isinstance(v, str):
            try:
                ints.append(int(v.strip()))
                continue
            except ValueError:
                break
        break
    if len(ints) == len(raw) and ints and min(ints) >= 0:
        k = max(ints) + 1
        return np.asarray(ints, dtype=np.int64), [str(i) for i in range(k)]
    if len(ints) == len(raw):  # negative ints: keep numeric order
        classes = sorted(set(ints))
        index = {c: i for i, c in enumerate(classes)}
        return np.asarray([index[v] for v in ints], dtype=np.int64), [str(c) for c in classes]
    keys = [str(v) for v in raw]
    names = sorted(set(keys))
    index = {c: i for i, c in enumerate(names)}
    return np.asarray([index[k] for k in keys], dtype=np.int64), names


def _number(value: Any, path: Path, line: int, column: str) -> float:
    where = f"{path}:{line}: column {column!r}"
    if isinstance(value, bool) or value is None:
        raise InputFileError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, str):
        if not value.strip():
            raise InputFileError(f"{where}: empty value (every feature must be a number)")
        try:
            out = float(value)
        except ValueError:
            raise InputFileError(f"{where}: expected a number, got {value!r}") from None
    elif isinstance(value, (int, float)):
        out = float(value)
    else:
        raise InputFileError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(out):
        raise InputFileError(f"{where}: expected a finite number, got {value!r}")
    return out


def _check_path(path: str | Path | None, kind: str) -> Path:
    if path is None:
        raise ConfigError(f"{kind}: pass path=<file>")
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"{p}: {kind} file not found")
    return p


def _missing_label(path: Path, label_column: str, columns: Sequence[str]) -> InputFileError:
    return InputFileError(
        f"{path}: no label column {label_column!r}{did_you_mean(label_column, columns)}; "
        f"columns: {', '.join(columns)} (choose one with label_column=...)"
    )


def _finish(
    name: str,
    path: Path,
    rows: list[list[float]],
    labels: list[Any],
    feature_names: list[str],
    split_kwargs: dict[str, Any],
) -> Splits:
    if not rows:
        raise InputFileError(f"{path}: no data rows")
    if not feature_names:
        raise InputFileError(f"{path}: no feature columns besides the label")
    y, class_names = encode_labels(labels)
    return make_splits(
        name,
        np.asarray(rows, dtype=np.float32),
        y,
        num_classes=len(class_names),
        class_names=class_names,
        info={"path": str(path), "feature_names": feature_names},
        **split_kwargs,
    )


def load_csv(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    path: str | Path | None = None,
    label_column: str = "label",
    ignore_columns: Sequence[str] = (),
    delimiter: str = ",",
) -> Splits:
    """CSV with a header row: numeric feature columns plus `label_column` (default 'label')."""
    p = _check_path(path, "csv")
    split_kwargs = dict(
        seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, labelled_fraction=labelled_fraction
    )
    rows: list[list[float]] = []
    labels: list[str] = []
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise InputFileError(f"{p}: empty file (expected a header row)")
            header = [h.strip() for h in header]
            if label_column not in header:
                raise _missing_label(p, label_column, header)
            unknown = [c for c in ignore_columns if c not in header]
            if unknown:
                raise InputFileError(f"{p}: ignore_columns {unknown} are not columns; columns: {', '.join(header)}")
            label_at = header.index(label_column)
            feat_at = [i for i, h in enumerate(header) if i != label_at and h not in ignore_columns]
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                line = reader.line_num
                if len(row) != len(header):
                    raise InputFileError(f"{p}:{line}: expected {len(header)} fields, got {len(row)}")
                labels.append(row[label_at].strip())
                rows.append([_number(row[i], p, line, header[i]) for i in feat_at])
    except UnicodeDecodeError as e:
        raise InputFileError(f"{p}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise InputFileError(f"{p}: malformed CSV ({e})") from None
    return _finish("csv", p, rows, labels, [header[i] for i in feat_at], split_kwargs)


def load_jsonl(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    path: str | Path | None = None,
    label_column: str = "label",
) -> Splits:
    """JSON lines: one object per line with numeric feature keys (or a 'features' list) and a label."""
    p = _check_path(path, "jsonl")
    split_kwargs = dict(
        seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, labelled_fraction=labelled_fraction
    )
    rows: list[list[float]] = []
    labels: list[Any] = []
    keys: list[str] | None = None
    width: int | None = None
    for line_no, obj in json_objects(p):
        if label_column not in obj:
            raise InputFileError(
                f"{p}:{line_no}: no label key {label_column!r}"
                f"{did_you_mean(label_column, list(obj))}; keys: {', '.join(obj)} "
                "(choose one with label_column=...)"
            )
        label = obj[label_column]
        if not isinstance(label, (str, int)) or isinstance(label, bool):
            raise InputFileError(f"{p}:{line_no}: label must be a string or an integer, got {label!r}")
        if "features" in obj and label_column != "features":
            feats = obj["features"]
            if not isinstance(feats, list):
                raise InputFileError(f"{p}:{line_no}: 'features' must be a list of numbers")
            width = len(feats) if width is None else width
            if len(feats) != width:
                raise InputFileError(f"{p}:{line_no}: expected {width} features, got {len(feats)}")
            rows.append([_number(v, p, line_no, f"features[{i}]") for i, v in enumerate(feats)])
        else:
            these = [k for k in obj if k != label_column]
            keys = these if keys is None else keys
            if set(these) != set(keys):
                raise InputFileError(
                    f"{p}:{line_no}: keys {sorted(these)} differ from the first record's {sorted(keys)}"
                )
            rows.append([_number(obj[k], p, line_no, k) for k in keys])
        labels.append(label)
    if keys is not None and width is not None:
        raise InputFileError(f"{p}: mixes records with a 'features' list and records with named keys")
    names = keys if keys is not None else [f"f{i}" for i in range(width or 0)]
    return _finish("jsonl", p, rows, labels, names, split_kwargs)


def load_breast_cancer(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
) -> Splits:
    """Breast-cancer tabular data bundled with scikit-learn (569 samples, 30 features, 2 classes)."""
    from sklearn.datasets import load_breast_cancer as _sk_load

    bunch = _sk_load()
    return make_splits(
        "breast_cancer",
        bunch.data.astype(np.float32),
        bunch.target.astype(np.int64),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        labelled_fraction=labelled_fraction,
        num_classes=2,
        class_names=[str(n) for n in bunch.target_names],
        info={"source": "sklearn.datasets.load_breast_cancer", "feature_names": list(bunch.feature_names)},
    )
