"""What a `fit()` run tells the user while and after it runs: the progress bar or log lines, and
the warning when a run ends with a higher training loss than it started with."""
from __future__ import annotations

import math
import sys
import warnings
from typing import Any


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise, or nothing."""

    def __init__(self, mode: str, total_steps: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, n: int, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def epoch(self, record: dict[str, Any]) -> None:
        if self.mode == "off":
            return
        parts = [f"epoch {record['epoch']}"]
        for k, v in record.items():
            if k != "epoch" and isinstance(v, float):
                parts.append(f"{k}={v:.4g}")
        line = " ".join(parts)
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class DivergenceWarning(UserWarning):
    """A run ended with a higher training loss than its first epoch's: it diverged."""


def warn_if_diverged(history: list[dict[str, Any]]) -> None:
    """Warn when the last epoch's mean training loss is above the first epoch's (3 epochs or more).

    A diverged run can end at chance level with every loss finite (soft targets at T = 20 with SGD
    at lr 0.05 did, in the Hinton protocol), so the non-finite guard says nothing."""
    losses = [h.get("train_loss") for h in history]
    if len(losses) < 3 or not all(isinstance(v, float) and math.isfinite(v) for v in (losses[0], losses[-1])):
        return
    if losses[-1] > losses[0]:
        warnings.warn(f"training diverged: the last epoch's train loss {losses[-1]:.4g} is above the first epoch's "
                      f"{losses[0]:.4g}; lower the learning rate or clip gradients (TrainConfig.grad_clip)",
                      DivergenceWarning, stacklevel=3)
