"""guard_torchvision (issue 25, item 7): a torchvision that is installed but does not import (PyPI's
CUDA build beside a CPU torch) is hidden from transformers, with a warning naming the fix; an
absent or working one is left alone. Each case runs in a fresh interpreter with a fake torchvision
package first on sys.path, so the real environment is never touched."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys, warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        from condense.models.hf import guard_torchvision
        first = guard_torchvision()
        second = guard_torchvision()
    out = {"first": first, "second": second, "warnings": [str(x.message) for x in w if "torchvision" in str(x.message)],
           "spec": importlib.util.find_spec("torchvision") is not None}
    try:
        import torchvision
        out["import"] = "ok"
    except ImportError as e:
        out["import"] = type(e).__name__
    if {check_transformers}:
        from transformers.utils import is_torchvision_available
        out["tf_sees"] = is_torchvision_available()
    print("RESULT" + json.dumps(out))
""")


def _run(tmp_path, init: str | None, check_transformers: bool = False) -> dict:
    if init is not None:
        pkg = tmp_path / "fake" / "torchvision"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(init)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]))
    code = SCRIPT.replace("{check_transformers}", str(check_transformers))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


BROKEN = 'raise RuntimeError("operator torchvision::nms does not exist")\n'


def test_broken_torchvision_is_hidden_with_a_warning_naming_the_fix(tmp_path):
    out = _run(tmp_path, BROKEN)
    assert out["first"] and out["first"] == out["second"]
    assert "operator torchvision::nms does not exist" in out["first"]
    assert "pip uninstall torchvision" in out["first"] and "download.pytorch.org/whl/cpu" in out["first"]
    assert len(out["warnings"]) == 1  # once per process
    assert out["spec"] is False and out["import"] in ("ImportError", "ModuleNotFoundError")


def test_transformers_stops_seeing_a_broken_torchvision(tmp_path):
    pytest.importorskip("transformers")
    out = _run(tmp_path, BROKEN, check_transformers=True)
    assert out["first"] and out["tf_sees"] is False


def test_working_torchvision_is_left_alone(tmp_path):
    out = _run(tmp_path, "__version__ = '0.0-fake'\n")
    assert out["first"] is None and out["warnings"] == [] and out["spec"] is True and out["import"] == "ok"


def test_absent_torchvision_is_left_alone(tmp_path):
    try:
        import importlib.util
        present = importlib.util.find_spec("torchvision") is not None
    except (ImportError, ValueError):
        present = False
    if present:
        pytest.skip("a real torchvision is installed here")
    out = _run(tmp_path, None)
    assert out["first"] is None and out["warnings"] == [] and out["spec"] is False
