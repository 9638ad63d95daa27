"""`condense demo` never silently replaces its run folder: an unfinished run of the same demo is
resumed, anything else is refused with the folder named and the way on (--force, --out); the text
demo has its own default folder. (The runs themselves are stubbed: tests/test_demo.py runs one.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import condense.recipes
from condense.cli import main
from condense.core.errors import ConfigError
from condense.demo import DEMO_RECIPE, run_demo
from condense.recipes import load_recipe


@pytest.fixture
def calls(monkeypatch):
    """Stub the recipe runner; record (what, folder) for every run or resume."""
    seen: list[tuple[str, Path]] = []

    def fake_run(recipe, out, quiet=False):
        seen.append(("run", Path(out)))
        Path(out).mkdir(parents=True, exist_ok=True)
        return {"stages": [], "html": None}

    def fake_resume(out, quiet=False):
        seen.append(("resume", Path(out)))
        return {"stages": [], "html": None}

    import sys

    # both where they are defined and where condense.demo imported them (`from condense.recipes import
    # run_recipe` binds its own name: patching condense.recipes alone let the real demo run, ~30 CPU-s a test)
    for module in (condense.recipes, sys.modules["condense.demo"]):
        if hasattr(module, "run_recipe"):
            monkeypatch.setattr(module, "run_recipe", fake_run)
        if hasattr(module, "resume_run"):
            monkeypatch.setattr(module, "resume_run", fake_resume)
    return seen


def _demo_folder(path: Path, *, finished: bool, epochs: int | None = None, name: str | None = None) -> Path:
    """A run folder as `condense demo` leaves it: the resolved recipe, a stage, DONE when finished."""
    data = load_recipe(DEMO_RECIPE).to_dict()
    for stage in data["stages"]:
        if epochs is not None and "train" in stage:
            stage["train"]["epochs"] = epochs
    if name is not None:
        data["name"] = name
    (path / "01-teacher").mkdir(parents=True)
    (path / "01-teacher" / "model.safetensors").write_bytes(b"weights")
    (path / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    if finished:
        (path / "DONE").write_text("ok\n")
    return path


def _untouched(path: Path) -> None:
    assert (path / "recipe.yaml").is_file() and (path / "01-teacher" / "model.safetensors").read_bytes() == b"weights"


def test_a_finished_demo_is_refused_with_the_folder_and_the_way_on(tmp_path, calls):
    run = _demo_folder(tmp_path / "condense-demo", finished=True)
    with pytest.raises(ConfigError) as e:
        run_demo(run, quiet=True)
    assert str(run) in str(e.value) and "--force" in str(e.value) and "--out" in str(e.value)
    assert calls == []
    _untouched(run)


def test_the_cli_refuses_with_exit_2_and_force_replaces(tmp_path, calls, capsys):
    run = _demo_folder(tmp_path / "d", finished=True)
    assert main(["demo", "--out", str(run), "--json"]) == 2
    err = capsys.readouterr().err
    assert f"{run}: holds a finished demo run" in err and "--force" in err
    _untouched(run)
    assert main(["demo", "--out", str(run), "--force", "--json"]) == 0
    assert calls == [("run", run)]
    assert not (run / "recipe.yaml").exists()  # the old run was removed, the (stubbed) new one ran there


def test_an_unfinished_run_of_the_same_demo_resumes(tmp_path, calls, capsys):
    run = _demo_folder(tmp_path / "d", finished=False)
    run_demo(run, quiet=True)
    assert calls == [("resume", run)]
    _untouched(run)


def test_an_unfinished_run_with_other_settings_is_refused(tmp_path, calls):
    run = _demo_folder(tmp_path / "d", finished=False, epochs=1)
    with pytest.raises(ConfigError, match="other settings.*--force"):
        run_demo(run, quiet=True)  # the shipped epochs, not 1
    run_demo(run, epochs=1, quiet=True)  # the same settings: resumed
    assert calls == [("resume", run)]


def test_folders_that_are_not_demo_runs_are_never_replaced(tmp_path, calls):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    other = _demo_folder(tmp_path / "other", finished=True, name="my-recipe")
    for folder, why in ((mine, "not a condense run folder"), (other, "not a demo")):
        for force in (False, True):
            with pytest.raises(ConfigError, match=why):
                run_demo(folder, quiet=True, force=force)
    assert (mine / "notes.txt").read_text() == "keep me"
    _untouched(other)
    assert calls == []
    empty = tmp_path / "empty"
    empty.mkdir()
    run_demo(empty, quiet=True)  # an empty folder is a fresh start
    assert calls == [("run", empty)]


def test_each_demo_has_its_own_default_folder(tmp_path, calls, monkeypatch):
    import condense.models.hf_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(condense.models.hf_folder, "packaged_model_dir", lambda: tmp_path / "minilm")
    assert main(["demo", "--json"]) == 0
    assert main(["demo", "--task", "text", "--json"]) == 0
    assert calls == [("run", Path("condense-demo")), ("run", Path("condense-demo-text"))]


def test_a_folder_holding_only_a_stale_lock_file_is_a_fresh_start(tmp_path):
    """A demo SIGKILLed before it wrote recipe.yaml leaves only the lock file: the next demo starts there."""
    from condense.core.io import LOCK_NAME
    from condense.demo import _existing_run

    run = tmp_path / "condense-demo"
    run.mkdir()
    (run / LOCK_NAME).write_text("12345\n")
    assert _existing_run(run, run / "recipe.yaml", force=False) is False
