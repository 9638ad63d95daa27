"""The adversarial matrix of issue 24, shared by tests/test_adversarial.py and benchmarks/reliability.py.

Each case builds hostile input in a work folder (a malicious model spec, a traversal stage name, a
symlink, a metadata memory bomb, a user's non-empty folder, an output path that is a file, a full
disk, NaN weights), runs one `condense` command on it, and is judged on four counts:

- the exit code is one of the documented ones the case expects;
- no file outside the case's own folders changed (a sentinel folder `outside/` with a file in it,
  hashed before and after; symlinks and traversal names point there);
- no user file was replaced (files the case marks as the user's, hashed before and after);
- no code named by hostile metadata ran (a marker file the hostile command would create).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass
class Case:
    name: str
    problem: str  # the issue-24 problem it attacks
    setup: Callable[[Path, Path], tuple[list[str], list[Path]]]  # (case dir, base artifact) -> (argv, user files)
    expect: tuple[int, ...]
    check_stdout: Callable[[str], bool] | None = None
    check_message: Callable[[str], bool] | None = None  # on the last line of stderr
    needs: Callable[[Path], str | None] | None = None  # None: can run; else the reason it is skipped


def _hash_tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "condense.json").read_text())


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    (folder / "condense.json").write_text(json.dumps(meta))


def _copy_base(base: Path, d: Path, name: str = "model") -> Path:
    dst = d / name
    shutil.copytree(base, dst)
    return dst


def make_base(work: Path) -> Path:
    """A small trained artifact (cnn width 8 on digits), the input of the hostile cases."""
    import torch

    import condense
    from condense.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=10, width=8)
    folder = work / "base"
    condense.save(model, folder)
    return folder


# -- the cases ------------------------------------------------------------------------------------
def _spec(name: str, kwargs: dict[str, Any], command: str) -> Callable[[Path, Path], tuple[list[str], list[Path]]]:
    def setup(d: Path, base: Path) -> tuple[list[str], list[Path]]:
        m = _copy_base(base, d)
        meta = _meta(m)
        meta["architecture"] = {"name": name, "kwargs": kwargs}
        _write_meta(m, meta)
        return [command, str(m), "--data", "digits"] if command == "eval" else [command, str(m)], []
    return setup


def _recipe_spec(d: Path, base: Path) -> tuple[list[str], list[Path]]:
    recipe = {"version": 1, "name": "hostile", "data": {"name": "digits"},
              "stages": [{"name": "t", "kind": "train",
                          "model": {"name": "os:system", "kwargs": {"command": f"touch {d / 'MARK'}"}},
                          "train": {"epochs": 1}}]}
    (d / "r.yaml").write_text(yaml.safe_dump(recipe))
    return ["run", str(d / "r.yaml"), "--out", str(d / "run")], []


def _traversal_recipe(d: Path, outside: Path) -> Path:
    rel = os.path.relpath(outside, d / "run")
    recipe = {"version": 1, "name": "trav", "data": {"name": "digits"},
              "stages": [{"name": f"x/{rel}", "kind": "train", "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
                          "train": {"epochs": 1}}]}
    (d / "r.yaml").write_text(yaml.safe_dump(recipe))
    return d / "r.yaml"


def _symlink_delete(d: Path, base: Path) -> tuple[list[str], list[Path]]:
    m = _copy_base(base, d)
    outside = d.parent.parent / "outside"
    (m / "lnk").symlink_to(outside, target_is_directory=True)
    meta = _meta(m)
    meta.setdefault("files", {})["lnk/keep.txt"] = {"bytes": 4, "sha256": "0" * 64}
    _write_meta(m, meta)
    # writing a model into the folder removes the files its old condense.json listed
    return ["prune", str(base), "--data", "digits", "--ratio", "0.5", "--recover", "none", "--out", str(m),
            "--force"], []


def _width_bomb(d: Path, base: Path) -> tuple[list[str], list[Path]]:
    m = _copy_base(base, d)
    meta = _meta(m)
    meta["architecture"]["kwargs"]["width"] = 10**6
    _write_meta(m, meta)
    return ["eval", str(m), "--data", "digits"], []


def _edit_bomb(d: Path, base: Path) -> tuple[list[str], list[Path]]:
    m = _copy_base(base, d)
    meta = _meta(m)
    meta.setdefault("edits", []).append({"kind": "factorize",
                                         "params": {"layers": {"classifier": {"form": "linear", "rank": [10**7]}}}})
    _write_meta(m, meta)
    return ["eval", str(m), "--data", "digits"], []


def _nonempty(command: str) -> Callable[[Path, Path], tuple[list[str], list[Path]]]:
    def setup(d: Path, base: Path) -> tuple[list[str], list[Path]]:
        out = d / "mine"
        out.mkdir()
        names = {"train": "model.safetensors", "export": "model.onnx", "prune": "model.safetensors"}
        user = out / names[command]
        user.write_bytes(b"the user's own file")
        if command == "train":
            argv = ["train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--out", str(out)]
        elif command == "export":
            argv = ["export", str(base), "--out-dir", str(out)]
        else:
            argv = ["prune", str(base), "--data", "digits", "--ratio", "0.5", "--recover", "none", "--out", str(out)]
        return argv, [user]
    return setup


def _out_is_file(d: Path, base: Path) -> tuple[list[str], list[Path]]:
    f = d / "notes.txt"
    f.write_text("a user's file")
    return ["train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--out", str(f)], [f]


def _nan_weights(d: Path, base: Path) -> tuple[list[str], list[Path]]:
    from safetensors.torch import load_file, save_file

    m = _copy_base(base, d)
    tensors = load_file(str(m / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 2)
    tensors[key] = tensors[key] * float("nan")
    save_file(tensors, str(m / "model.safetensors"))
    meta = _meta(m)
    meta.pop("files", None)  # the checksums would (rightly) refuse it; this case is about NaN output
    _write_meta(m, meta)
    return ["eval", str(m), "--data", "digits", "--json"], []


def _strict_json(text: str) -> bool:
    def bad(c: str) -> Any:
        raise ValueError(c)
    try:
        json.loads(text, parse_constant=bad)
        return True
    except ValueError:
        return False


_HOLDERS: list[subprocess.Popen] = []


def _concurrent_resume(d: Path, base: Path) -> tuple[list[str], list[Path]]:
    """A run folder another process is working in (it holds the folder lock): `resume` must refuse."""
    run = d / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump({"version": 1, "name": "busy", "data": {"name": "digits"},
                                                      "stages": [{"name": "t", "kind": "train",
                                                                  "model": {"name": "mlp"}, "train": {"epochs": 1}}]}))
    code = ("import sys, time; from condense.core.io import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    _HOLDERS.append(holder)
    return ["resume", str(run)], [run / "recipe.yaml"]


def _names_holder(stderr_last_line: str) -> bool:
    return bool(_HOLDERS) and str(_HOLDERS[-1].pid) in stderr_last_line


def _full_disk(d: Path, base: Path) -> tuple[list[str], list[Path]]:
    mnt = d / "small"
    return ["train", "--model", "cnn", "--data", "digits", "--epochs", "1", "--out", str(mnt / "run")], []


def _can_mount(d: Path) -> str | None:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return "needs root and mount(8) to make a small tmpfs"
    mnt = d / "small"
    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True, text=True)
    return None if r.returncode == 0 else f"cannot mount a tmpfs here ({r.stderr.strip()[:80]})"


def cases() -> list[Case]:
    return [
        Case("spec os:system in condense.json, eval", "artifact runs code", _spec("os:system", {}, "eval"), (3,)),
        Case("spec subprocess:run in condense.json, profile", "artifact runs code",
             _spec("subprocess:run", {"args": ["sh", "-c", "true"]}, "profile"), (3,)),
        Case("spec os:system in a recipe, run", "recipe names code", _recipe_spec, (2, 3)),
        Case("stage name with ../ , validate", "traversal",
             lambda d, b: (["recipe", "validate", str(_traversal_recipe(d, d.parent.parent / "outside"))], []), (2,)),
        Case("stage name with ../ , run", "traversal",
             lambda d, b: (["run", str(_traversal_recipe(d, d.parent.parent / "outside")), "--out", str(d / "run")], []),
             (2,)),
        Case("condense.json lists a file behind a symlink, write there", "symlink delete", _symlink_delete, (0, 2, 3)),
        Case("width 10^6 in condense.json", "memory bomb", _width_bomb, (3,)),
        Case("rank 10^7 in the edit log", "memory bomb", _edit_bomb, (3,)),
        Case("train --out a user's non-empty folder", "silent replacement", _nonempty("train"), (2,)),
        Case("export --out-dir a folder with the user's model.onnx", "silent replacement", _nonempty("export"), (2,)),
        Case("prune --out a user's non-empty folder", "silent replacement", _nonempty("prune"), (2,)),
        Case("--out is a file", "raw traceback", _out_is_file, (2,)),
        Case("resume while another process runs in the folder", "no run lock", _concurrent_resume, (4,),
             check_message=_names_holder),
        Case("a full disk while writing", "raw traceback", _full_disk, (4,), needs=_can_mount),
        Case("NaN weights, eval --json", "non-strict JSON", _nan_weights, (0,), check_stdout=_strict_json),
    ]


# -- the runner -----------------------------------------------------------------------------------
def _cli(argv: list[str]) -> tuple[int, str, str]:
    from condense.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return int(code), out.getvalue(), err.getvalue()


def run_matrix(work: Path, selected: list[Case] | None = None) -> dict[str, Any]:
    """Run every case; return {"rows": [...], "counts": {...}}."""
    work.mkdir(parents=True, exist_ok=True)
    base = make_base(work)
    rows = []
    for i, case in enumerate(selected or cases()):
        d = work / "cases" / f"{i:02d}"
        d.mkdir(parents=True)
        outside = work / "outside"
        shutil.rmtree(outside, ignore_errors=True)
        outside.mkdir()
        (outside / "keep.txt").write_text("keep")
        (outside / "model.onnx").write_bytes(b"someone else's model")
        skip = case.needs(d) if case.needs else None
        row: dict[str, Any] = {"case": case.name, "problem": case.problem, "expect": list(case.expect)}
        if skip:
            rows.append({**row, "skipped": skip})
            continue
        try:
            argv, user = case.setup(d, base)
            before_out, before_user = _hash_tree(outside), {str(u): u.read_bytes() for u in user}
            t0 = time.perf_counter()
            code, stdout, stderr = _cli(argv)
            row.update(code=code, seconds=round(time.perf_counter() - t0, 2),
                       message=(stderr.strip().splitlines() or [""])[-1][:300])
            row["outside_touched"] = _hash_tree(outside) != before_out
            row["user_files_replaced"] = sum(1 for u in user if not u.exists() or u.read_bytes() != before_user[str(u)])
            row["code_ran"] = (d / "MARK").exists()
            row["stdout_ok"] = case.check_stdout(stdout) if case.check_stdout else True
            row["message_ok"] = case.check_message(row["message"]) if case.check_message else True
            row["ok"] = (code in case.expect and not row["outside_touched"] and not row["user_files_replaced"]
                         and not row["code_ran"] and row["stdout_ok"] and row["message_ok"])
        finally:
            while _HOLDERS:
                h = _HOLDERS.pop()
                h.kill()
                h.wait()
            if (d / "small").is_mount():
                subprocess.run(["umount", str(d / "small")], check=False)
        rows.append(row)
    ran = [r for r in rows if "skipped" not in r]
    counts = {"cases": len(rows), "ran": len(ran), "skipped": len(rows) - len(ran),
              "refused_with_expected_code": sum(r["code"] in r["expect"] for r in ran),
              "outside_files_touched": sum(r["outside_touched"] for r in ran),
              "user_files_replaced": sum(r["user_files_replaced"] for r in ran),
              "hostile_code_ran": sum(r["code_ran"] for r in ran), "all_ok": all(r["ok"] for r in ran)}
    return {"rows": rows, "counts": counts, "python": sys.version.split()[0]}
