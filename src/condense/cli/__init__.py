"""The `condense` command line.

Exit codes (the only ones `main` returns):

* 0   ok;
* 2   bad usage or config (`ConfigError`), including an output the command refuses to write
      (`--out` that is a file, a non-empty output folder without `--force`);
* 3   bad input file (`InputFileError`: missing, truncated, corrupt, refused pickle);
* 4   run failure (`RunError`: the loss became NaN, a full disk - "no space left on device while
      writing PATH" -, ...) and any unexpected exception: one line on stderr,
      `condense: internal error: TYPE: MESSAGE; traceback written to PATH`, the traceback in the
      output folder's `condense-error.log` (once the command has written there; a rerun is not
      refused because of it), else in a new `condense-error-*.log` file in the temp folder;
* 130 interrupted (SIGINT / Ctrl-C), 143 terminated (SIGTERM): training stops at a step boundary
      with a checkpoint.

Every measuring command takes `--json` (strict JSON on stdout: NaN / inf are written as null,
with a warning). Every command that writes an output folder follows one rule
(`cli.common.check_out_folder`): it refuses a non-empty folder that is not its own resumable
output unless `--force` is given, and with `--force` replaces only the files it writes.

One module per command group, each with a `register(sub)` that adds its sub-commands:
`cli.run` (demo, run, resume, recipe, init, report, tune), `cli.train` (train, distill, pretrain,
reduce), `cli.measure` (eval, profile, export, models, datasets), `cli.prune` (prune,
sensitivity), `cli.quantize` (quantize; `cli.quantize_transformer` for its transformer method)
and `cli.lowrank` (factorize, reduce-depth). Commands call the method packages; no method package
imports the command line. Shared helpers live in `cli.common`, which imports none of them.

Building the parser imports no torch, so `--help` and usage errors answer at once: `register`
functions only add arguments, and commands import what they need when they run.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from condense.cli.common import (
    ERROR_LOG,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN,
    EXIT_TERMINATED,
    EXIT_USAGE,
)

__all__ = ["EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RUN", "EXIT_TERMINATED", "EXIT_USAGE", "build_parser",
           "main"]


def build_parser() -> argparse.ArgumentParser:
    from condense.cli import apply, lowrank, measure, prune, quantize, run, train
    from condense.version import __version__

    p = argparse.ArgumentParser(prog="condense", description="Make trained PyTorch models small and fast, and prove it.")
    p.add_argument("--version", action="version", version=f"condense {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, train, measure, prune, quantize, lowrank, apply):
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
    except Exception as e:  # noqa: BLE001 - the documented last resort: exit 4, one line, traceback kept
        typed = _full_disk(args, e)
        if typed is not None:
            print(f"condense: error: {typed}", file=sys.stderr)
            return typed.exit_code
        _internal_error(args, e, argv)
        return EXIT_RUN
    finally:
        dist.destroy(graceful=ok)


def _no_space(exc: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT OSError behind `exc` (itself, its cause or its context), if any."""
    import errno

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return e
        e = e.__cause__ or e.__context__
    return None


def _torch_write_failed(exc: BaseException) -> bool:
    """torch.save writing to a path reports a full disk as `RuntimeError: [enforce fail at
    inline_container.cc:...] . unexpected pos N vs M` (or `... failed writing file ...`)."""
    msg = str(exc)
    return isinstance(exc, RuntimeError) and "inline_container" in msg and ("unexpected pos" in msg or "failed writing" in msg)


def _full_disk(args: argparse.Namespace, exc: Exception):
    """A full disk (or quota) behind `exc`, as a `NoSpaceError` naming what was being written
    (exit 4); None for any other exception."""
    import errno
    import os

    from condense.core.errors import NoSpaceError

    folder = getattr(args, "output_folder", None)
    space = _no_space(exc)
    if space is not None:
        what = "disk quota exceeded" if space.errno == getattr(errno, "EDQUOT", None) else "no space left on device"
        return NoSpaceError(f"{what} while writing {space.filename or folder or 'an output file'} "
                            "(free some space and run again)")
    if _torch_write_failed(exc):
        import shutil
        from pathlib import Path

        free: int | None = None
        with contextlib.suppress(Exception):
            where = Path(str(folder or os.getcwd())).absolute()
            while not where.exists():
                where = where.parent
            free = shutil.disk_usage(where).free
        first = str(exc).strip().splitlines()[0]
        if free is not None and free < 2**20:  # the device is (still) full: say so
            return NoSpaceError(f"no space left on device while writing {folder or 'an output file'} ({first}; "
                                f"{free:,} bytes free there) (free some space and run again)")
        left = f"; {free / 2**20:,.1f} MiB free there now" if free is not None else ""
        return NoSpaceError(f"writing {folder or 'an output file'} failed ({first}); a full disk is the usual "
                            f"cause{left} (free some space and run again)")
    return None


def _internal_error(args: argparse.Namespace, exc: Exception, argv: Sequence[str] | None) -> None:
    """An exception no command turned into a CondenseError: one line on stderr, the traceback in
    the output folder's `ERROR_LOG` (else a file in the temp folder)."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    path = _log_traceback(getattr(args, "output_folder", None), text, sys.argv[1:] if argv is None else list(argv))
    message = (str(exc).strip().splitlines() or [""])[0]
    where = f"traceback written to {path}" if path is not None else "the traceback follows"
    print(f"condense: internal error: {type(exc).__name__}: {message}; {where}", file=sys.stderr)
    if path is None:  # neither the output folder nor the temp folder took it: do not lose it
        print(text, file=sys.stderr, end="")


def _log_traceback(folder: object, text: str, argv: Sequence[str]) -> str | None:
    """Append `text` to `<folder>/ERROR_LOG` when the command has written into `folder`, else
    write it to a new `condense-error-*.log` file in the temp folder; the path written, or None
    when neither worked."""
    import datetime
    import os
    import tempfile
    from pathlib import Path

    rank = os.environ.get("RANK", "0")
    name = ERROR_LOG if rank in ("", "0") else ERROR_LOG.replace(".log", f".rank{rank}.log")
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    entry = f"--- {stamp} condense {' '.join(map(str, argv))}\n{text}"
    # the output folder, once the command has written into it (an empty or missing folder stays so,
    # and a rerun of `run` into it is not refused because of the log)
    if folder is not None and Path(str(folder)).is_dir() and any(Path(str(folder)).iterdir()):
        with contextlib.suppress(Exception):
            path = Path(str(folder)) / name
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(entry)
            return str(path)
    with contextlib.suppress(Exception):
        fd, tmp = tempfile.mkstemp(prefix=f"condense-error-{stamp[:19].replace(':', '')}-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(entry)
        return tmp
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
