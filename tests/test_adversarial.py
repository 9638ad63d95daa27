"""The adversarial matrix of issue 24 (tests/_adversarial.py): hostile specs, traversal names,
symlinks, memory bombs, a user's non-empty folders, an output that is a file, a full disk (where a
tmpfs can be mounted), NaN weights. Every case must end with its documented exit code, touch no
file outside its folder, replace no user file and run no code named by hostile metadata."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _adversarial import run_matrix  # noqa: E402


def test_adversarial_matrix(tmp_path):
    result = run_matrix(tmp_path / "adv")
    bad = [r for r in result["rows"] if "skipped" not in r and not r["ok"]]
    assert not bad, json.dumps(bad, indent=1)
    counts = result["counts"]
    assert counts["ran"] >= 13  # only the full-disk case may be skipped (it needs root to mount a tmpfs)
    assert counts["outside_files_touched"] == 0 and counts["user_files_replaced"] == 0 and counts["hostile_code_ran"] == 0
