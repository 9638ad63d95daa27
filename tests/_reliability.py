"""Generators for the reliability tests and `benchmarks/reliability.py`: mutated recipes and
corrupted artifacts. Deterministic given a seed; each case says what it did, so a failure names it.

Recipe mutations (`recipe_cases`): a wrong type, an unknown key, a deleted key, a huge / negative /
non-finite number at a random place of a valid 4-stage recipe, and text-level attacks: YAML alias
bombs, `!!python/object` tags, duplicate keys, non-UTF-8 bytes, truncation, random byte flips.
Artifact corruptions (`artifact_cases`): truncation at several offsets, flipped header and data
bytes, a huge header length, a tensor of the wrong dtype / shape, invalid or mismatched
condense.json, an edit log naming a layer the architecture lacks.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

BASE_RECIPE = {
    "version": 1, "name": "fuzz", "seed": 0, "data": {"name": "digits"},
    "measure": {"batch_sizes": [1, 8], "repeats": 3},
    "stages": [
        {"name": "teacher", "kind": "train", "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
         "train": {"epochs": 2, "lr": 0.003, "batch_size": 32}},
        {"name": "student", "kind": "distill", "model": {"name": "mlp", "kwargs": {"hidden": [16]}}, "teacher": "teacher",
         "config": {"alpha": 0.9, "temperature": 4.0}, "train": {"epochs": 2}},
        {"name": "pruned", "kind": "prune", "config": {"method": "channel", "ratio": 0.5, "round_to": 8},
         "recover": {"method": "distill"}, "train": {"epochs": 1}},
        {"name": "int8", "kind": "quantize", "config": {"method": "static", "calibration_samples": 64}},
    ],
}

WRONG_VALUES: list[Any] = [None, True, "abc", "", [], [1, "x"], {}, {"k": 1}, 3, -1, 0.5, "1e9", [[[]]]]
NUMBERS: list[Any] = [10**30, -(10**30), 1e308, -1e308, float("inf"), float("-inf"), float("nan"), -1, -0.5, 0,
                      2**63, 1e-320]

ALIAS_BOMB = ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
              "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
              "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n")
PYTHON_TAGS = ["!!python/object/apply:os.system ['touch PWNED']", "!!python/object:builtins.object {}",
               "!!python/name:os.system", "!!python/object/new:subprocess.Popen [['touch', 'PWNED']]"]


def _paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path in a nested dict / list (leaves and containers)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _set(obj: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8")


def recipe_cases(n: int, seed: int = 0) -> Iterator[tuple[str, bytes, bool]]:
    """`n` (description, file bytes, must_fail) mutations of BASE_RECIPE. `must_fail`: the text
    attacks, which no valid recipe contains; a structural mutation may happen to stay valid."""
    rng = random.Random(seed)
    base_text = _dump(BASE_RECIPE)
    kinds = ["wrong_type", "unknown_key", "delete_key", "number", "alias_bomb", "python_tag", "duplicate_key",
             "non_utf8", "truncate", "flip_bytes"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        data = copy.deepcopy(BASE_RECIPE)
        paths = list(_paths(data))
        if kind in ("wrong_type", "number"):
            path = rng.choice(paths)
            value = rng.choice(WRONG_VALUES if kind == "wrong_type" else NUMBERS)
            _set(data, path, value)
            yield f"{kind}: {'.'.join(map(str, path))} = {value!r}", _dump(data), False
        elif kind == "unknown_key":
            maps = [p for p in paths if isinstance(_get(data, p), dict)] + [()]
            path = rng.choice(maps)
            target = _get(data, path) if path else data
            target[rng.choice(["epocs", "lr_", "ratio2", "kinds", "stage", "x" * rng.randint(1, 300)])] = rng.choice(WRONG_VALUES)
            yield f"unknown_key under {'.'.join(map(str, path)) or 'top'}", _dump(data), False
        elif kind == "delete_key":
            path = rng.choice([p for p in paths if isinstance(p[-1], str)])
            del _get(data, path[:-1])[path[-1]]
            yield f"delete_key: {'.'.join(map(str, path))}", _dump(data), False
        elif kind == "alias_bomb":
            text = ALIAS_BOMB + base_text.decode().replace("stages:", "stages_unused:", 1) + "stages: *g\n"
            yield "alias_bomb", text.encode(), True
        elif kind == "python_tag":
            lines = base_text.decode().splitlines()
            idx = rng.choice([j for j, ln in enumerate(lines) if ": " in ln])
            key = lines[idx].split(": ")[0]
            lines[idx] = f"{key}: {rng.choice(PYTHON_TAGS)}"
            yield f"python_tag at line {idx + 1}", ("\n".join(lines) + "\n").encode(), True
        elif kind == "duplicate_key":
            lines = base_text.decode().splitlines()
            idx = rng.choice([j for j, ln in enumerate(lines) if ": " in ln and not ln.lstrip().startswith("- ")])
            lines.insert(idx + 1, lines[idx])
            yield f"duplicate_key at line {idx + 2}", ("\n".join(lines) + "\n").encode(), True
        elif kind == "non_utf8":
            pos = rng.randrange(len(base_text))
            bad = rng.choice([b"\xff", b"\xfe\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80"])
            yield f"non_utf8 at byte {pos}", base_text[:pos] + bad + base_text[pos:], True
        elif kind == "truncate":
            pos = rng.randrange(len(base_text))
            yield f"truncate at byte {pos}", base_text[:pos], False
        else:
            buf = bytearray(base_text)
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(32, 127)
            yield "flip_bytes", bytes(buf), False


# ----------------------------------------------------------------------------- artifacts


def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _rewrite_tensor(folder: Path, change: Callable[[dict], None], rehash: bool = True) -> None:
    """Rewrite model.safetensors with `change(state)` applied, and (by default) the recorded sha256 /
    size updated, so only the loader's structural checks stand between the change and the model."""
    import hashlib

    from safetensors.torch import load_file, save_file

    w = folder / "model.safetensors"
    state = load_file(str(w))
    change(state)
    save_file(state, str(w))
    if rehash:
        meta_path = folder / "condense.json"
        meta = json.loads(meta_path.read_text())
        meta["files"]["model.safetensors"] = {"bytes": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
        meta_path.write_text(json.dumps(meta))


def artifact_cases() -> list[tuple[str, Callable[[Path], None]]]:
    """(description, corrupt(folder)) pairs; each leaves the folder unloadable (exit 3)."""
    def truncate(frac: float):
        def f(folder: Path) -> None:
            w = folder / "model.safetensors"
            data = w.read_bytes()
            w.write_bytes(data[: int(len(data) * frac)])
        return f

    def truncate_at(offset: int):
        def f(folder: Path) -> None:
            w = folder / "model.safetensors"
            w.write_bytes(w.read_bytes()[:offset])
        return f

    def flip(where: str):
        def f(folder: Path) -> None:
            w = folder / "model.safetensors"
            data = bytearray(w.read_bytes())
            n = _header_len(bytes(data))
            pos = 8 + n // 2 if where == "header" else 8 + n + (len(data) - 8 - n) // 2
            data[pos] ^= 0x5A
            w.write_bytes(bytes(data))
        return f

    def huge_header(folder: Path) -> None:
        w = folder / "model.safetensors"
        data = w.read_bytes()
        w.write_bytes(struct.pack("<Q", 2**62) + data[8:])

    def huge_header_rehashed(folder: Path) -> None:
        huge_header(folder)
        _rehash(folder)

    def wrong_dtype(folder: Path) -> None:
        def ch(state: dict) -> None:
            k = next(iter(state))
            state[k] = state[k].double()
        _rewrite_tensor(folder, ch)

    def wrong_shape(folder: Path) -> None:
        def ch(state: dict) -> None:
            k = next(k for k, v in state.items() if v.dim() == 2)
            state[k] = state[k][:-1].contiguous()
        _rewrite_tensor(folder, ch)

    def missing_tensor(folder: Path) -> None:
        _rewrite_tensor(folder, lambda state: state.pop(next(iter(state))))

    def meta_text(text: str):
        def f(folder: Path) -> None:
            (folder / "condense.json").write_text(text)
        return f

    def meta_change(change: Callable[[dict], None]):
        def f(folder: Path) -> None:
            p = folder / "condense.json"
            meta = json.loads(p.read_text())
            change(meta)
            p.write_text(json.dumps(meta))
        return f

    def other_width(meta: dict) -> None:
        meta["architecture"]["kwargs"]["hidden"] = [7]

    def missing_layer_edit(meta: dict) -> None:
        meta["edits"] = [{"kind": "factorize", "params": {"layers": {"features.99": {"form": "linear", "rank": [8]}}}}]

    def unknown_edit(meta: dict) -> None:
        meta["edits"] = [{"kind": "prune_chanels", "params": {}}]

    def channels_edit_missing_layer(meta: dict) -> None:
        meta["edits"] = [{"kind": "drop_blocks", "params": {"blocks": ["layers.42"]}}]

    cases: list[tuple[str, Callable[[Path], None]]] = [
        (f"truncate weights to {frac:.0%}", truncate(frac)) for frac in (0.0, 0.01, 0.3, 0.5, 0.9, 0.999)]
    cases += [(f"truncate weights at byte {o}", truncate_at(o)) for o in (4, 8, 9, 64)]
    cases += [("flip a header byte", flip("header")), ("flip a data byte", flip("data")),
              ("huge header length", huge_header), ("huge header length, hash updated", huge_header_rehashed),
              ("wrong dtype (hash updated)", wrong_dtype), ("wrong shape (hash updated)", wrong_shape),
              ("missing tensor (hash updated)", missing_tensor),
              ("condense.json not JSON", meta_text("{not json")), ("condense.json empty", meta_text("")),
              ("condense.json a list", meta_text("[1, 2]")), ("condense.json binary", meta_text("\x00\x01\x02")),
              ("condense.json: architecture with other widths", meta_change(other_width)),
              ("condense.json: architecture removed", meta_change(lambda m: m.pop("architecture"))),
              ("condense.json: unknown model name", meta_change(lambda m: m["architecture"].update(name="mpl"))),
              ("condense.json: wrong format", meta_change(lambda m: m.update(format="other"))),
              ("condense.json: files not a mapping", meta_change(lambda m: m.update(files=[1]))),
              ("condense.json: weights size wrong", meta_change(lambda m: m["files"]["model.safetensors"].update(bytes=1))),
              ("condense.json: edits not a list", meta_change(lambda m: m.update(edits="x"))),
              ("edit log: factorize names a missing layer", meta_change(missing_layer_edit)),
              ("edit log: drop_blocks names a missing block", meta_change(channels_edit_missing_layer)),
              ("edit log: unknown edit kind", meta_change(unknown_edit)),
              ("weights file removed", lambda f: (f / "model.safetensors").unlink()),
              ]
    return cases


def _rehash(folder: Path) -> None:
    import hashlib

    w = folder / "model.safetensors"
    meta_path = folder / "condense.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["model.safetensors"] = {"bytes": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
    meta_path.write_text(json.dumps(meta))


# ----------------------------------------------------------------------------- time limits, kills

@contextmanager
def deadline(seconds: int, what: str) -> Iterator[None]:
    """Raise TimeoutError (naming `what`) when the block runs longer than `seconds` (main thread)."""
    def boom(*_a: Any) -> None:
        raise TimeoutError(f"hang: {what} took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def condense_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`condense ARGS` in a child process, output discarded, on one intra-op thread unless `env`
    says otherwise (as the in-process tests, tests/conftest.py): these runs' models are tiny, and on
    2 shared cores torch's default two threads made the 4-stage kill-test recipe take 3x the
    CPU time (44.8 against 15.1 CPU-seconds) for the same promise (an uninterrupted run and its
    killed-and-resumed twin run with the same threads, so their weights must still be equal)."""
    env = {**(os.environ if env is None else env)}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen([sys.executable, "-m", "condense.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)


def kill_after(cmd_args: list[str], seconds: float) -> int | None:
    """Start `condense ...`, SIGKILL it after `seconds` (or let it finish first); its exit code
    when it finished on its own, else None."""
    proc = condense_process(*cmd_args)
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def run_digest(run: Path) -> dict[str, Any]:
    """sha256 of every stage's weights and its test accuracy: equal digests = bit-identical runs."""
    out: dict[str, Any] = {}
    for d in sorted(p for p in run.iterdir() if p.is_dir()):
        out[d.name] = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
        out[d.name + ":acc"] = json.loads((d / "metrics.json").read_text())["accuracy"]
    return out
