"""The `condense` command line.

Exit codes: 0 ok; 2 bad usage or config; 3 bad input file; 4 run failure; 130 interrupted.
Every measuring command takes `--json` (machine-readable output on stdout).

One module per command group, each with a `register(sub)` that adds its sub-commands:
`cli.run` (demo, run, resume, recipe, init, report, tune), `cli.train` (train, distill, pretrain,
reduce), `cli.measure` (eval, profile, export, models, datasets), and the method packages' own
command modules `prune.cli`, `quantize.cli`, `lowrank.cli`. Shared helpers live in
`cli.common`, which imports none of them.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from condense.cli.common import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN, EXIT_USAGE

__all__ = ["EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RUN", "EXIT_USAGE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from condense import __version__
    from condense.cli import measure, run, train
    from condense.lowrank import cli as lowrank_cli
    from condense.prune import cli as prune_cli
    from condense.quantize import cli as quantize_cli

    p = argparse.ArgumentParser(prog="condense", description="Make trained PyTorch models small and fast, and prove it.")
    p.add_argument("--version", action="version", version=f"condense {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, train, measure, prune_cli, quantize_cli, lowrank_cli):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from condense.core.errors import CondenseError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
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
