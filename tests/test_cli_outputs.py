"""Issue 24, CLI side: no silent replacement of a user's files, only documented exit codes, strict JSON.

Every command that writes an output folder refuses a non-empty folder (exit 2, naming the folder
and --force) unless it is its own resumable output or --force is given, and --force replaces only
what the command writes. An --out that is a file is refused before any work. A full disk is exit
4 with words; any other unexpected exception is exit 4, one line, the traceback in a file.
NaN / inf never reach a JSON document as the non-JSON tokens NaN / Infinity.
"""
from __future__ import annotations

import errno
import json
import math
import re
import warnings
from pathlib import Path

import pytest

from condense.cli import main

MLP = ["--model", "mlp", "--model-arg", "hidden=[8]", "--epochs", "1"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity / -Infinity, as strict JSON parsers do."""
    def refuse(token: str):
        raise ValueError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def user_folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "mlp"
    assert main(["train", *MLP, "--out", str(out)]) == 0
    return out


# -- no silent replacement --------------------------------------------------------------------------

def test_train_refuses_a_users_folder_then_force_keeps_unrelated_files(capsys, tmp_path, monkeypatch):
    out = user_folder(tmp_path / "mine", **{"model.safetensors": "my weights", "notes.txt": "keep me"})
    code, stdout, err = run(capsys, "train", *MLP, "--out", out)
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert str(out) in err and "--force" in err and "not empty" in err
    assert (out / "model.safetensors").read_text() == "my weights" and sorted(p.name for p in out.iterdir()) == [
        "model.safetensors", "notes.txt"]

    code, _, err = run(capsys, "train", *MLP, "--out", out, "--force")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "keep me"  # not the command's file: untouched
    assert (out / "condense.json").is_file() and (out / "checkpoint" / "last.ckpt").is_file()

    # its own resumable output: --resume continues from its checkpoint without --force ...
    code, _, err = run(capsys, "train", *MLP, "--out", out, "--resume")
    assert code == 0, err
    # ... but a fresh run over it is refused like any other non-empty folder
    code, _, err = run(capsys, "train", *MLP, "--out", out)
    assert code == 2 and "--force" in err
    # --resume on a folder without a checkpoint is not its own output either
    other = user_folder(tmp_path / "other", **{"notes.txt": "x"})
    code, _, err = run(capsys, "train", *MLP, "--out", other, "--resume")
    assert code == 2 and str(other) in err and "--force" in err


def test_export_out_dir_refuses_a_users_model_onnx_and_force_replaces_only_it(capsys, artifact, tmp_path):
    out = user_folder(tmp_path / "deploy", **{"model.onnx": "my onnx", "README": "keep me"})
    code, _, err = run(capsys, "export", artifact, "--out-dir", out)
    assert code == 2 and str(out) in err and "--force" in err
    assert (out / "model.onnx").read_text() == "my onnx"

    code, stdout, err = run(capsys, "export", artifact, "--out-dir", out, "--force", "--json")
    assert code == 0, err
    assert strict_loads(stdout)["path"] == str(out / "model.onnx")
    assert (out / "model.onnx").stat().st_size > 1000 and (out / "README").read_text() == "keep me"


def test_export_next_to_the_model_or_to_a_file_never_replaces_silently(capsys, artifact, tmp_path):
    import shutil

    model = tmp_path / "copy"
    shutil.copytree(artifact, model)
    (model / "model.onnx").write_text("an earlier export")
    code, _, err = run(capsys, "export", model)
    assert code == 2 and str(model / "model.onnx") in err and "--force" in err
    assert (model / "model.onnx").read_text() == "an earlier export"
    target = tmp_path / "m.onnx"
    target.write_text("mine")
    code, _, err = run(capsys, "export", artifact, "--out", target)
    assert code == 2 and "--force" in err and target.read_text() == "mine"


def test_other_writers_follow_the_same_rule(capsys, artifact, tmp_path):
    busy = user_folder(tmp_path / "busy", **{"keep.txt": "x"})
    for argv in (["prune", artifact, "--ratio", "0.5", "--recover", "none"],
                 ["quantize", artifact, "--latency-batches"],
                 ["factorize", artifact, "--rank", "4", "--recover", "none"],
                 ["distill", "--teacher", artifact, "--student", "mlp", "--epochs", "1"],
                 ["pretrain", "--model", "mlp", "--epochs", "1"],
                 ["reduce", "--method", "pca"],
                 ["tune", artifact],
                 ["report", artifact]):
        code, _, err = run(capsys, *argv, "--out", busy)
        assert code == 2 and str(busy) in err and "--force" in err, (argv, err)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    # the recipe template and the sensitivity table are files: replaced only with --force
    (tmp_path / "r.yaml").write_text("mine")
    code, _, err = run(capsys, "init", tmp_path / "r.yaml")
    assert code == 2 and "--force" in err and (tmp_path / "r.yaml").read_text() == "mine"
    code, _, err = run(capsys, "sensitivity", artifact, "--out", tmp_path / "r.yaml")
    assert code == 2 and "--force" in err and (tmp_path / "r.yaml").read_text() == "mine"


# -- only documented exit codes ---------------------------------------------------------------------

def test_out_that_is_a_file_is_refused_before_any_work(capsys, artifact, tmp_path, monkeypatch):
    import condense.train

    def no_training(*a, **k):
        raise AssertionError("training ran before the output was checked")

    monkeypatch.setattr(condense.train, "train_model", no_training)
    f = tmp_path / "a-file"
    f.write_text("mine")
    for argv in (["train", *MLP, "--out", f], ["train", *MLP, "--out", f, "--force"],
                 ["prune", artifact, "--out", f], ["quantize", artifact, "--out", f],
                 ["reduce-depth", artifact, "--drop", "1", "--out", f], ["export", artifact, "--out-dir", f],
                 ["export", artifact, "--out", tmp_path], ["run", "recipe.yaml", "--out", f],
                 ["init", tmp_path], ["train", *MLP, "--out", f / "sub"]):
        code, stdout, err = run(capsys, *argv)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert "not a folder" in err or "is a folder" in err or "is a file" in err, (argv, err)
    assert f.read_text() == "mine"


def test_a_full_disk_says_so_with_exit_4(capsys, tmp_path, monkeypatch):
    import torch

    import condense.core.io as io

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io, "atomic_write_text", full)
    out = tmp_path / "pca"
    code, _, err = run(capsys, "reduce", "--data", "breast_cancer", "--method", "pca", "--set", "n_components=5",
                       "--out", out)
    assert code == 4 and len(err.strip().splitlines()) == 1
    assert f"no space left on device while writing {out}" in err  # its transform.json or reduce.json
    monkeypatch.undo()

    # a checkpoint write that fails with ENOSPC (no file name on the error): the output folder is named
    def full_save(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_save)
    code, _, err = run(capsys, "train", *MLP, "--out", tmp_path / "t")
    last = err.strip().splitlines()[-1]  # (the lines before it are training progress)
    assert code == 4 and "Traceback" not in err
    assert last == f"condense: error: no space left on device while writing {tmp_path / 't'} (free some space and run again)"

    # torch.save to a path reports a full disk as "unexpected pos": named as a probable full disk
    def torch_full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_full)
    code, _, err = run(capsys, "train", *MLP, "--out", tmp_path / "u")
    last = err.strip().splitlines()[-1]
    assert code == 4 and "Traceback" not in err and "full disk" in last and "unexpected pos" in last


def test_an_unexpected_exception_is_exit_4_one_line_and_a_traceback_file(capsys, tmp_path, monkeypatch):
    import tempfile

    import condense.cli.measure as measure
    import condense.reduce

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def boom(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(measure, "cmd_models", boom)
    code, stdout, err = run(capsys, "models")
    assert code == 4 and stdout == "" and len(err.strip().splitlines()) == 1
    m = re.fullmatch(r"condense: internal error: RuntimeError: boom; traceback written to (\S+)\n", err)
    assert m, err
    log = Path(m.group(1))
    assert log.parent == tmp_path / "tmp" and log.name.startswith("condense-error-")
    assert "Traceback" in log.read_text() and "RuntimeError: boom" in log.read_text()

    # a command with an output folder it has written into: the traceback goes there
    out = user_folder(tmp_path / "red", **{"notes.txt": "keep"})

    def broken(*a, **k):
        raise KeyError("surprise")

    monkeypatch.setattr(condense.reduce, "reduce_data", broken)
    code, _, err = run(capsys, "reduce", "--method", "pca", "--out", out, "--force")
    assert code == 4 and err == (f"condense: internal error: KeyError: 'surprise'; traceback written to "
                                 f"{out / 'condense-error.log'}\n")
    assert "KeyError: 'surprise'" in (out / "condense-error.log").read_text()
    monkeypatch.undo()
    # the log does not make the folder "someone's": a rerun there is not refused because of it
    only_log = tmp_path / "only-log"
    only_log.mkdir()
    (only_log / "condense-error.log").write_text("an earlier failure")
    code, _, err = run(capsys, "reduce", "--data", "breast_cancer", "--method", "pca", "--set", "n_components=5",
                       "--out", only_log)
    assert code == 0, err


def test_interrupts_keep_their_codes(capsys, monkeypatch):
    import signal

    import condense.cli.measure as measure
    from condense.train.signals import Interrupted

    def stop(signum):
        def fn(args):
            raise Interrupted(signum, "stopped") if signum else KeyboardInterrupt
        return fn

    monkeypatch.setattr(measure, "cmd_models", stop(signal.SIGTERM))
    assert run(capsys, "models")[0] == 143
    monkeypatch.setattr(measure, "cmd_models", stop(0))
    assert run(capsys, "models")[0] == 130


# -- strict JSON ------------------------------------------------------------------------------------

def test_eval_json_of_nan_weights_is_strict_json(capsys, artifact, tmp_path):
    import torch

    from condense.artifacts import load, save

    model = load(artifact)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    nan = save(model, tmp_path / "nan", extra={"data": {"name": "digits", "kwargs": {}}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, stdout, err = run(capsys, "eval", nan, "--json")
    assert code == 0, err
    m = strict_loads(stdout)  # NaN / Infinity would raise here
    assert m["loss"] is None
    assert any("loss" in str(w.message) and "null" in str(w.message) for w in caught)


def test_dumps_strict_and_save_artifact(tmp_path):
    import numpy as np
    import torch

    from condense.cli.common import save_artifact
    from condense.core.io import write_json_strict
    from condense.core.jsonio import dumps_strict
    from condense.models import build_model

    doc = {"a": float("nan"), "b": [1.5, np.float32("inf")], "c": {"d": -math.inf, "e": torch.tensor(2.0)},
           "p": tmp_path, "n": np.int64(3)}
    with pytest.warns(RuntimeWarning, match=r"a \(nan\), b\[1\] \(inf\), c\.d \(-inf\)"):
        text = dumps_strict(doc)
    assert strict_loads(text) == {"a": None, "b": [1.5, None], "c": {"d": None, "e": 2.0}, "p": str(tmp_path), "n": 3}
    with pytest.raises(TypeError):
        dumps_strict({"x": object()})
    with pytest.warns(RuntimeWarning):
        write_json_strict(tmp_path / "m.json", {"loss": float("nan")})
    assert strict_loads((tmp_path / "m.json").read_text()) == {"loss": None}

    model = build_model("mlp", in_features=4, num_classes=2, hidden=[3])
    with pytest.warns(RuntimeWarning, match="loss"):
        save_artifact(model, tmp_path / "art", metrics={"test": {"loss": float("nan"), "accuracy": 0.5}})
    meta = strict_loads((tmp_path / "art" / "condense.json").read_text())
    assert meta["metrics"]["test"] == {"loss": None, "accuracy": 0.5}
