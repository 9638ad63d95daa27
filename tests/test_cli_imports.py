"""`condense --help` and usage errors answer without importing torch (or any other heavy library),
and the lazily loaded package and command modules still behave as when imported eagerly."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "onnx", "onnxruntime", "transformers", "sklearn", "scipy")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _heavy_after(argv: list[str]) -> tuple[int, list[str], str]:
    """Run `python -m condense ARGV` in a fresh interpreter; (exit code, heavy modules imported, output)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['condense', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('condense', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    code = e.code or 0\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('HEAVY', code, ','.join(heavy))\n"
    )
    r = _python(code)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1].split(" ")
    assert last[0] == "HEAVY", r.stdout
    return int(last[1]), [m for m in (last[2] if len(last) > 2 else "").split(",") if m], r.stdout + r.stderr


def test_build_parser_imports_no_torch():
    r = _python("import sys; from condense.cli import build_parser; build_parser(); print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["--version"], 0),
    (["demo", "--help"], 0),
    (["prune", "--help"], 0),
    (["quantize", "--help"], 0),
    (["factorize", "--help"], 0),
    (["recipe", "validate", "--help"], 0),
    (["demo", "--task", "audio"], 2),  # argument errors answer before anything heavy is imported
    (["prune"], 2),
    (["no-such-command"], 2),
])
def test_help_and_usage_errors_import_nothing_heavy(argv, code):
    got, heavy, out = _heavy_after(argv)
    assert got == code, out
    assert heavy == [], f"{argv}: imported {heavy}"
    if argv == ["--help"]:
        assert "COMMAND" in out and "quantize" in out and "demo" in out


def test_method_commands_live_in_the_cli_and_load_their_package_when_run():
    """`condense.cli.prune` is a command module of the CLI: building the parser imports neither
    `condense.prune` nor torch; the command's config parsing then brings the package in."""
    code = (
        "import sys\n"
        "from condense.cli import build_parser\n"
        "args = build_parser().parse_args(['prune', 'model', '--ratio', '0.3', '--out', 'x'])\n"
        "assert 'condense.prune' not in sys.modules and 'torch' not in sys.modules\n"
        "from condense.cli import prune as cli\n"
        "assert args.fn is cli.cmd_prune\n"
        "cfg = cli._prune_config(args)\n"
        "import condense\n"
        "from condense.prune import PruneConfig\n"
        "assert isinstance(cfg, PruneConfig) and cfg.method == 'channel' and cfg.ratio == 0.3\n"
        "assert callable(condense.prune) and condense.prune is sys.modules['condense.prune'].prune\n"
        "print('ok')\n"
    )
    r = _python(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_lazy_package_keeps_the_verbs():
    code = (
        "import sys, condense\n"
        "assert 'torch' not in sys.modules\n"
        "import condense.prune.config, condense.quantize.registry, condense.distill.config, condense.evaluate.metrics\n"
        "import condense.tune\n"
        "for verb in ('prune', 'quantize', 'distill', 'evaluate', 'tune'):\n"
        "    assert callable(getattr(condense, verb)), verb  # the verb, not the subpackage of that name\n"
        "assert set(condense.__all__) == set(condense._EXPORTS) | {'__version__'}\n"
        "assert all(getattr(condense, name) is not None for name in condense.__all__)\n"
        "assert condense.models.build_model is condense.build_model  # subpackages still read as attributes\n"
        "try:\n"
        "    condense.no_such_name\n"
        "except AttributeError:\n"
        "    print('ok')\n"
    )
    r = _python(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
