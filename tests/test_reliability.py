"""Reliability, measured: mutated recipes give a typed error (exit 2) and never a traceback or a
hang; corrupted artifacts give exit 3 and never load. Larger counts: `slow` and
benchmarks/reliability.py (figures in docs/reliability.md)."""
from __future__ import annotations

import shutil

import pytest

import condense
from _reliability import artifact_cases, deadline, recipe_cases

DEFAULT_RECIPES = 250


def _validate_all(tmp_path, n: int, seed: int, capsys) -> dict[str, int]:
    from condense.cli import main

    counts = {"ok": 0, "exit 2": 0}
    for i, (what, data, must_fail) in enumerate(recipe_cases(n, seed)):
        p = tmp_path / f"r{i}.yaml"
        p.write_bytes(data)
        with deadline(20, what):
            code = main(["recipe", "validate", str(p)])  # an uncaught exception fails the test, naming the case
        err = capsys.readouterr().err
        assert code in (0, 2), f"{what}: exit {code}\n{err}"
        assert not (must_fail and code == 0), f"{what}: accepted"
        assert "Traceback" not in err, f"{what}: {err}"
        counts["ok" if code == 0 else "exit 2"] += 1
    assert not (tmp_path / "PWNED").exists()
    return counts


def test_mutated_recipes_give_typed_errors(tmp_path, capsys):
    counts = _validate_all(tmp_path, DEFAULT_RECIPES, 0, capsys)
    assert counts["exit 2"] >= DEFAULT_RECIPES // 2


@pytest.mark.slow
def test_mutated_recipes_give_typed_errors_many(tmp_path, capsys):
    _validate_all(tmp_path, 2000, 1, capsys)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch_model = condense.build_model("mlp", in_features=64, num_classes=10, hidden=[16])
    folder = tmp_path_factory.mktemp("art") / "m"
    condense.save(torch_model, folder)
    return folder


@pytest.mark.parametrize("what,corrupt", artifact_cases(), ids=[c[0] for c in artifact_cases()])
def test_corrupt_artifacts_exit_3(saved, tmp_path, capsys, what, corrupt):
    from condense.cli import main

    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    corrupt(folder)
    with deadline(30, what):
        code = main(["eval", str(folder), "--data", "digits"])
    err = capsys.readouterr().err
    assert code == 3, f"{what}: exit {code}\n{err}"
    assert "Traceback" not in err and err.startswith("condense: error:")
