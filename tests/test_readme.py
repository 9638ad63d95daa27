"""README.md's "Your own model" section runs as written: its factory file, its Python block and
every command of its shell block, in a fresh folder (subprocesses, like a user's shell)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def test_your_own_model_section_runs_as_written(tmp_path):
    section = _section("Your own model")
    factory, script = _blocks(section, "python")
    (shell,) = _blocks(section, "bash")
    assert factory.startswith("# mynets.py\n")
    (tmp_path / "mynets.py").write_text(factory)
    (tmp_path / "own_model.py").write_text(script)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONWARNINGS": ""}
    env.pop("PYTHONPATH", None)  # the commands set what they need themselves
    env.setdefault("OMP_NUM_THREADS", "1")  # one intra-op thread, as the in-process tests (tests/conftest.py)

    def sh(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    done = sh(f"{sys.executable} own_model.py")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "mine" / "condense.json").exists()
    assert (tmp_path / "runs" / "mine-dense" / "model.safetensors").exists()
    commands = [line for line in shell.splitlines() if line.strip()]
    assert len(commands) == 3
    for command in commands:
        done = sh(command)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert "accuracy" in done.stdout or "saved" in done.stdout, done.stdout
    assert (tmp_path / "runs" / "mine-pruned" / "condense.json").exists()
    # "A state_dict .pt without --model is refused with a message saying so"
    done = sh("PYTHONPATH=. condense eval weights.pt --data digits")
    assert done.returncode == 2 and "--model package.module:factory" in done.stderr
