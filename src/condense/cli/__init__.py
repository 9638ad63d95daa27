"""The `condense` command line.

Exit codes: 0 ok; 2 bad usage or config; 3 bad input file; 4 run failure; 130 interrupted.
Every measuring command takes `--json` (machine-readable output on stdout).

One module per command group, each with a `register(sub)` that adds its sub-commands:
`cli.run` (demo, run, resume, recipe, init, report, tune), `cli.train` (train, distill, pretrain,
reduce), `cli.measure` (eval, profile, export, models, datasets), and the method packages' own
command modules `prune.cli`, `quantize.cli`, `lowrank.cli`. Shared helpers live in
`cli.common`, which imports none of them.

Building the parser imports no torch, so `--help` and usage errors answer at once: `register`
functions only add arguments, commands import what they need when they run, and the method
packages' command modules are loaded without their package's `__init__` (which imports torch to
register the methods) until a command of theirs runs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

from condense.cli.common import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN, EXIT_USAGE

__all__ = ["EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RUN", "EXIT_USAGE", "build_parser", "main"]


#: the method packages' command modules, after condense.cli's own (run, train, measure)
METHOD_CLIS = ("condense.prune.cli", "condense.quantize.cli", "condense.lowrank.cli")


def _command_module(name: str) -> ModuleType:
    """Import a method package's command module; while its package is not imported yet, load the
    module file alone (registered under its own name), so the package's `__init__` and torch wait
    until a command runs and imports the package for real."""
    if name in sys.modules:
        return sys.modules[name]
    package = name.rpartition(".")[0]
    if package in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec(package)  # finds the package without running its __init__
    sub = importlib.machinery.PathFinder.find_spec(name, spec.submodule_search_locations) if spec else None
    if sub is None or sub.loader is None:
        return importlib.import_module(name)
    module = importlib.util.module_from_spec(sub)
    sys.modules[name] = module
    try:
        sub.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def build_parser() -> argparse.ArgumentParser:
    from condense import __version__
    from condense.cli import measure, run, train

    p = argparse.ArgumentParser(prog="condense", description="Make trained PyTorch models small and fast, and prove it.")
    p.add_argument("--version", action="version", version=f"condense {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, train, measure, *(_command_module(name) for name in METHOD_CLIS)):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    from condense.core.errors import CondenseError
    from condense.train import distributed as dist
    from condense.train.signals import stop_on_signals

    ok = False
    try:
        with stop_on_signals():  # training commands stop at a step boundary with a checkpoint
            code = int(args.fn(args) or 0)
        ok = True
        return code
    except CondenseError as e:
        print(f"condense: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("condense: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        dist.destroy(graceful=ok)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
