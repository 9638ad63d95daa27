"""`condense demo` (the README's first command) end to end, with every training stage cut to one epoch."""
import pytest

from condense.core.errors import ConfigError
from condense.demo import run_demo


def test_demo_runs_the_chain_with_label_free_transfer(tmp_path, capsys):
    report = run_demo(tmp_path / "demo", epochs=1)
    rows = {r["stage"]: r for r in report["stages"]}
    assert list(rows) == ["teacher", "student-alone", "student", "pruned", "int8", "deploy"]
    # pruning half of the width-16 student's channels gives exactly the baseline's width-8 architecture
    assert rows["pruned"]["params"] == rows["student-alone"]["params"] < rows["student"]["params"] / 3
    # the student and the recovery learn from the teacher on every training image, labelled or not
    assert any("transfer set is all 1295 training images (387 labelled + 908 unlabelled)" in n
               for n in rows["student"]["notes"])
    assert any(n.startswith("label-free recovery") for n in rows["pruned"]["notes"])
    assert rows["deploy"]["bytes_onnx"] < rows["pruned"]["bytes_onnx"] / 2  # the int8 file
    for name in ("report.html", "report.md", "report.json"):
        assert (tmp_path / "demo" / name).is_file()
    out = capsys.readouterr().out
    assert "the same architecture trained alone on the labels" in out

    # running it again never silently replaces the run: a finished one is refused, files untouched
    run = tmp_path / "demo"
    teacher = (run / "01-teacher" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="finished demo run.*--force"):
        run_demo(run, epochs=1)
    # an interrupted one is resumed: the finished stages are kept, the unfinished one runs again
    (run / "DONE").unlink()
    (run / "06-deploy" / "DONE").unlink()
    capsys.readouterr()
    again = run_demo(run, epochs=1)
    assert "resuming the unfinished demo run" in capsys.readouterr().err
    assert (run / "01-teacher" / "model.safetensors").read_bytes() == teacher
    assert [r["accuracy"] for r in again["stages"]] == [r["accuracy"] for r in report["stages"]]
    assert (run / "DONE").is_file()
