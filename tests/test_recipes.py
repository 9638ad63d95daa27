"""Recipes: validation with file:line errors, every shipped recipe validates, runs resume exactly after SIGKILL."""
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from _reliability import condense_process, kill_after, run_digest
from condense.core.errors import ConfigError
from condense.recipes import load_recipe, validate_recipe
from condense.recipes.runner import RESOLVED

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "src/condense/recipes").glob("*.yaml"))


def test_there_are_shipped_recipes():
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    validate_recipe(load_recipe(path))


def test_init_template_validates(tmp_path):
    from condense.cli import main

    assert main(["init", str(tmp_path / "r.yaml")]) == 0
    validate_recipe(load_recipe(tmp_path / "r.yaml"))
    assert main(["init", str(tmp_path / "r.yaml")]) == 2  # never overwrites without --force


BASE = """\
name: t
data: {name: digits}
stages:
  - name: teacher
    kind: train
    model: {name: mlp, kwargs: {hidden: [32]}}
    train: {epochs: 2}
"""


def _check(tmp_path, text, pattern):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        validate_recipe(load_recipe(p))


def test_misspelled_keys_name_file_line_and_close_key(tmp_path):
    _check(tmp_path, BASE.replace("epochs: 2", "epocs: 2"), r"r.yaml:7: unknown key 'epocs' for TrainConfig.*did you mean: epochs")
    _check(tmp_path, BASE + "  - {name: s, kind: distill, teacher: teacher, model: {name: mlp}, config: {temprature: 2}}\n",
           r"r.yaml:8: unknown key 'temprature'.*did you mean: temperature")
    _check(tmp_path, BASE.replace("kind: train", "kind: trian"), r"r.yaml:4: unknown stage kind 'trian'.*did you mean: train")
    _check(tmp_path, BASE + "  - {kind: prune, from: techer, config: {method: channel, ratio: 0.5}}\n",
           r"'from: techer' names no earlier stage.*did you mean: teacher")
    _check(tmp_path, BASE + "  - {kind: factorize, config: {rank_by: enrgy}}\n", r"r.yaml:8: .*rank_by.*enrgy")
    _check(tmp_path, BASE + "  - {kind: quantize, config: {method: static, weight_bits: 9}}\n", r"r.yaml:8: .*weight_bits must be in 2..8")
    _check(tmp_path, BASE.replace("name: t\n", "name: t\nstages_: []\n"), r"unknown top-level key 'stages_'.*did you mean: stages")
    _check(tmp_path, BASE + "  - {kind: distill, model: {name: mlp}}\n", r"needs 'teacher: <earlier stage name>'")
    _check(tmp_path, BASE.replace("name: t\n", "name: t\nmeasure: [1, 2]\n"), r"'measure' must be a mapping")
    _check(tmp_path, BASE.replace("train: {epochs: 2}", "train: [2]"), r"'train' must be a mapping")
    _check(tmp_path, BASE.replace("{name: digits}", "{name: digits, sede: 1}"),
           r"r.yaml:2: dataset 'digits': unknown option 'sede'.*did you mean: seed")
    _check(tmp_path, BASE.replace("hidden: [32]", "hiden: [32]"), r"r.yaml:6: model 'mlp': unknown argument 'hiden'.*did you mean: hidden")
    _check(tmp_path, BASE.replace("name: mlp", "name: mpl"), r"r.yaml:6: unknown model 'mpl'.*did you mean: mlp")
    _check(tmp_path, BASE.replace("{name: mlp, kwargs: {hidden: [32]}}", "{name: 'hf:/nowhere', kwargs: {layerz: 2}}"),
           r"r.yaml:6: model 'hf:/nowhere': unknown argument 'layerz'")


def test_yaml_is_read_safely(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("!!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)
    assert not (tmp_path / "pwned").exists()


#: a 4-stage run kept short (what the kill tests prove is bit-identical resume, not accuracy: 4 + 4 + 2
#: epochs, every stage still checkpoints and resumes mid-epoch); it was 25 + 25 + 5 epochs
KILL_RECIPE = """\
name: kill-test
seed: 3
data: {name: digits}
measure: {batch_sizes: [1, 8], repeats: 3, warmup: 1}
stages:
  - name: teacher
    kind: train
    model: {name: mlp, kwargs: {hidden: [64]}}
    train: {epochs: 4, lr: 0.003, batch_size: 32}
  - name: student
    kind: distill
    model: {name: mlp, kwargs: {hidden: [32]}}
    teacher: teacher
    config: {alpha: 0.9, temperature: 4}
    train: {epochs: 4, lr: 0.005, batch_size: 32}
  - name: pruned
    kind: prune
    config: {method: channel, ratio: 0.25, round_to: 8, importance: l1}
    recover: {method: distill, alpha: 0.9, temperature: 4}
    train: {epochs: 2, lr: 0.002, batch_size: 32}
  - name: int8
    kind: quantize
    config: {method: static, calibration_samples: 128}
"""


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    (base / "r.yaml").write_text(KILL_RECIPE)
    # the uninterrupted run goes in this process (one intra-op thread, tests/conftest.py), the
    # killed and resumed ones in children on one thread: equal digests also say that a run's
    # weights do not depend on the process that computed them (and it saves a cold start)
    from condense.cli import main

    assert main(["run", str(base / "r.yaml"), "--out", str(base / "ref")]) == 0
    return base, run_digest(base / "ref")


def _kill_when(proc, path: Path, timeout=300):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended (code {proc.returncode}) before {path} appeared")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("point", [
    pytest.param("01-teacher/checkpoint/last.ckpt", marks=pytest.mark.slow),
    "02-student/checkpoint/last.ckpt",  # mid-distillation: the hardest case, kept in the default run
    pytest.param("02-student/DONE", marks=pytest.mark.slow),
])
def test_sigkill_then_resume_matches_uninterrupted(reference_run, point):
    base, ref = reference_run
    run = base / ("killed-" + point.replace("/", "_"))
    _kill_when(condense_process("run", str(base / "r.yaml"), "--out", str(run)), run / point)
    assert not (run / "DONE").exists()
    from condense.cli import main

    assert main(["resume", str(run)]) == 0  # what a new process would do: it reads only the run folder
    assert (run / "DONE").exists()
    assert run_digest(run) == ref


@pytest.mark.slow
def test_sigkill_at_20_random_times_resumes_bit_identical(reference_run):
    """SIGKILL at 20 seeded random moments of the 4-stage run (anywhere: mid-epoch, mid-write,
    mid-measurement); every resume must end with the uninterrupted run's exact weights."""
    import random

    base, ref = reference_run
    t0 = time.time()
    assert condense_process("run", str(base / "r.yaml"), "--out", str(base / "timed")).wait(timeout=600) == 0
    wall = time.time() - t0
    rng = random.Random(20)
    for i in range(20):
        run = base / f"random-{i}"
        at = rng.uniform(0.02, 0.98) * wall
        if kill_after(["run", str(base / "r.yaml"), "--out", str(run)], at) is None:
            again = ["resume", str(run)] if (run / RESOLVED).is_file() else ["run", str(base / "r.yaml"), "--out", str(run)]
            assert condense_process(*again).wait(timeout=600) == 0, f"{again[0]} after a kill at {at:.1f} s"
        assert run_digest(run) == ref, f"kill at {at:.1f} s of {wall:.1f} s"
        shutil.rmtree(run)


def test_run_refuses_existing_folder(reference_run):
    from condense.cli import main

    base, _ = reference_run
    assert main(["run", str(base / "r.yaml"), "--out", str(base / "ref")]) == 2
    assert not (base / "ref" / ".condense.lock").exists()  # the finished run released its lock


# --- paths stay inside the run folder; one run per folder (issue 24) -------------------------------

TRAVERSAL = BASE.replace("name: teacher", "name: x/../../../victim")


@pytest.mark.parametrize("name", ["x/../../../victim", "../up", "/abs", "a..b", ".hidden", "a b", "x" * 65, "[1, 2]"])
def test_unsafe_stage_names_are_refused_with_file_and_line(tmp_path, name):
    text = BASE.replace("name: teacher", f"name: {name!r}" if name != "[1, 2]" else f"name: {name}")
    _check(tmp_path, text, r"r.yaml:4: stage name .* is not allowed: use 1 to 64 letters, digits")


def test_safe_stage_names_pass(tmp_path):
    for name in ("teacher", "int8", "v1.2", "student-copy", "a_b", "X" * 64):
        p = tmp_path / "r.yaml"
        p.write_text(BASE.replace("name: teacher", f"name: {name}"))
        validate_recipe(load_recipe(p))


def test_traversal_stage_name_is_refused_by_validate_and_run_and_nothing_is_written(tmp_path, capsys):
    from condense.cli import main

    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.onnx").write_text("user's file")
    recipe = work / "r.yaml"
    recipe.write_text(TRAVERSAL)
    assert main(["recipe", "validate", str(recipe)]) == 2
    assert f"{recipe}:4: stage name 'x/../../../victim' is not allowed" in capsys.readouterr().err
    assert main(["run", str(recipe), "--out", str(work / "run")]) == 2
    assert f"{recipe}:4:" in capsys.readouterr().err
    assert sorted(p.name for p in victim.iterdir()) == ["model.onnx"]
    assert (victim / "model.onnx").read_text() == "user's file"
    assert not (work / "run").exists()


def test_stage_dir_refuses_unsafe_names_of_recipes_built_in_code(tmp_path):
    from condense.recipes.runner import stage_dir

    assert stage_dir(tmp_path, 0, "teacher") == tmp_path / "01-teacher"
    with pytest.raises(ConfigError, match="is not allowed"):
        stage_dir(tmp_path, 0, "../../victim")


@pytest.mark.parametrize("section,key", [("train", "log_file"), ("train", "checkpoint_dir"), ("config", "cache_dir")])
def test_recipes_cannot_name_where_a_stage_writes(tmp_path, section, key):
    text = BASE + ("  - {name: s, kind: distill, teacher: teacher, model: {name: mlp},\n"
                   f"     {section}: {{{key}: /tmp/elsewhere}}}}\n")
    _check(tmp_path, text, rf"r.yaml:9: stage 's': '{key}' is a path, and a recipe's stages write only inside their folder")


def _resumable_run(tmp_path: Path) -> Path:
    """A run folder as `run` leaves it before its first stage (what `resume` continues)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / RESOLVED).write_text(BASE)
    return run


def test_a_symlink_in_the_run_folder_leading_out_is_refused_before_anything_runs(tmp_path, capsys):
    from condense.cli import main

    run = _resumable_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metrics.json").write_text("user's file")
    (run / "01-teacher").symlink_to(elsewhere, target_is_directory=True)
    assert main(["resume", str(run)]) == 3
    err = capsys.readouterr().err
    assert f"resolves to {elsewhere.resolve()}, outside {run.resolve()}" in err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["metrics.json"]
    assert (elsewhere / "metrics.json").read_text() == "user's file"
    assert not (run / ".condense.lock").exists()  # released on the error


def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder(tmp_path, capsys):
    """The lock taken in this process (as `condense run` / `resume` hold it) refuses the runner."""
    from condense.cli import main
    from condense.core.io import FolderBusyError, folder_lock
    from condense.recipes import resume_run

    run = _resumable_run(tmp_path)
    with folder_lock(run):
        with pytest.raises(FolderBusyError, match=rf"process {os.getpid()} is running in this folder") as e:
            resume_run(run)
        assert e.value.pid == os.getpid() and e.value.exit_code == 4
        assert main(["resume", str(run)]) == 4
        assert f"process {os.getpid()} is running in this folder" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [".condense.lock", RESOLVED]  # nothing written
    assert not (run / ".condense.lock").exists()


def test_run_into_a_locked_empty_folder_is_refused(tmp_path):
    """Two `condense run` into one new folder: the second meets the first one's lock."""
    from condense.core.io import FolderBusyError, folder_lock
    from condense.recipes import run_recipe

    (tmp_path / "r.yaml").write_text(BASE)
    with folder_lock(tmp_path / "run"), pytest.raises(FolderBusyError, match=str(os.getpid())):
        run_recipe(tmp_path / "r.yaml", tmp_path / "run")
    assert not (tmp_path / "run" / RESOLVED).exists()


def test_a_lock_held_by_another_process_names_its_pid_and_a_killed_holder_does_not_block(tmp_path):
    import subprocess
    import sys

    from condense.core.io import LOCK_NAME, FolderBusyError, folder_lock

    run = _resumable_run(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from condense.core.io import folder_lock\n"
         f"with folder_lock({str(run)!r}):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=rf"process {holder.pid} is running in this folder"), folder_lock(run):
            pass
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, the kernel drops the lock
        holder.wait()
    assert (run / LOCK_NAME).read_text().strip() == str(holder.pid)
    with folder_lock(run):
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_without_fcntl_a_pid_file_locks_and_a_dead_holder_is_stale(tmp_path, monkeypatch):
    import subprocess
    import sys

    import condense.core.io as io

    monkeypatch.setattr(io, "_fcntl", None)
    run = tmp_path / "run"
    with io.folder_lock(run), pytest.raises(io.FolderBusyError, match=str(os.getpid())), io.folder_lock(run):
        pass
    assert not (run / io.LOCK_NAME).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / io.LOCK_NAME).write_text(f"{dead.pid}\n")  # left by a killed run
    with io.folder_lock(run):
        assert (run / io.LOCK_NAME).read_text().strip() == str(os.getpid())


def test_a_lock_kept_by_the_children_of_a_dead_holder_is_waited_for(tmp_path):
    """flock is shared with forked children (e.g. data loader workers): when the recorded holder is
    gone, the lock is waited for (up to core.io.ORPHAN_WAIT_S) instead of refused."""
    import subprocess
    import sys

    from condense.core.io import folder_lock

    run = tmp_path / "run"
    code = ("import os, time; from condense.core.io import folder_lock\n"
            f"cm = folder_lock({str(run)!r}); cm.__enter__()\n"
            "if os.fork() == 0:\n    time.sleep(1.5); os._exit(0)\n"
            "os._exit(0)\n")  # the holder dies at once; its child keeps the lock 1.5 s longer
    subprocess.run([sys.executable, "-c", code], check=True)
    t0 = time.monotonic()
    with folder_lock(run):
        assert (run / ".condense.lock").read_text().strip() == str(os.getpid())
    assert time.monotonic() - t0 < 30


def test_a_run_times_every_deployed_file_in_one_pass(reference_run):
    """Issue 27: report.json holds one interleaved ONNX Runtime pass over every stage's deployed
    file against the first stage's; the int8 stage's torch (fake-quant) latency is kept apart."""
    base, _ = reference_run
    run = base / "ref"
    report = json.loads((run / "report.json").read_text())
    lp = report["latency_pass"]
    assert lp["reference"] == "teacher" and set(lp["files"]) == {"teacher", "student", "pruned", "int8"}
    assert lp["files"]["int8"] == "model.int8.onnx"
    for res in lp["batches"].values():
        assert set(res["ratios"]) == set(lp["files"]) and res["ratios"]["teacher"] == 1.0
        assert isinstance(res["reliable"], bool) and res["measured"] in (1, 2)
    int8 = json.loads((run / "04-int8" / "metrics.json").read_text())
    assert "torch" not in int8["latency_ms"] and set(int8["simulation_latency_ms"]) == {"torch"}
    teacher = json.loads((run / "01-teacher" / "metrics.json").read_text())
    assert "torch" in teacher["latency_ms"]
