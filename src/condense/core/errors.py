"""Typed errors. Each maps to a documented CLI exit code and reads as one clear line.

Exit codes: 0 ok, 2 bad usage / config, 3 bad input file, 4 run failure (and any unexpected error), 130
interrupted (SIGINT), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class CondenseError(Exception):
    """Base class of every error condense raises on purpose."""

    exit_code: int = 4


class ConfigError(CondenseError, ValueError):
    """A config field, CLI argument or recipe entry is invalid (exit code 2)."""

    exit_code = 2


class UnknownNameError(ConfigError, KeyError):
    """A name looked up in a registry (model, dataset, method, module) does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class InputFileError(CondenseError, OSError):
    """An input file or folder is missing, truncated, corrupt or of the wrong kind (exit code 3)."""

    exit_code = 3


class RunError(CondenseError, RuntimeError):
    """A run failed for a reason that is not bad input (exit code 4)."""

    exit_code = 4


class NonFiniteLossError(RunError):
    """Training produced non-finite losses too many steps in a row."""


class NoSpaceError(RunError):
    """A write failed because the disk (or the user's quota) is full (exit code 4)."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean: a, b?)' for close matches of `name`, or '' if none are close."""
    cands = list(candidates)
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.5)
    if not close:
        lowered = [c for c in cands if name.lower() in c.lower() or c.lower() in name.lower()]
        close = lowered[:n]
    return f" (did you mean: {', '.join(close)}?)" if close else ""
