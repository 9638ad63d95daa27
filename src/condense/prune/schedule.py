"""Sparsity schedules (`step -> sparsity`) and the callbacks that apply them inside `fit()`.

* `cubic_sparsity`: gradual pruning of Zhu & Gupta 2017 ("To prune, or not to prune"):
  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3, flat before t0 and after t0 + n*dt.
* `linear_sparsity`: a straight ramp between the same end points.
* `GradualPruningCallback`: every `frequency` optimizer steps, re-masks the selected layers to
  the schedule's sparsity (magnitude or random scores), holding the final sparsity at the end.
* `SlimmingCallback`: network slimming's L1 penalty on BatchNorm gamma (Liu et al. 2017), added
  to the gradients after backward; prune afterwards with `SlimmingConfig`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.prune.config import check_ratio
from condense.prune.masks import maskable_kinds, set_masks
from condense.prune.selection import select_layers
from condense.prune.unstructured import magnitude_scores, masks_from_scores, random_scores
from condense.train.callbacks import Callback, FitState


def _progress(step: int, start_step: int, end_step: int) -> float:
    if end_step <= start_step:
        return 1.0 if step >= start_step else 0.0
    return min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)


def cubic_sparsity(step: int, start_step: int, end_step: int, initial: float, final: float) -> float:
    """Zhu & Gupta 2017: fast pruning early, slow near the end; `initial` before `start_step`,
    `final` from `end_step` on (end_step - start_step = n * dt)."""
    return final + (initial - final) * (1.0 - _progress(step, start_step, end_step)) ** 3


def linear_sparsity(step: int, start_step: int, end_step: int, initial: float, final: float) -> float:
    """Linear ramp from `initial` at `start_step` to `final` at `end_step`."""
    return initial + (final - initial) * _progress(step, start_step, end_step)


SCHEDULES = {"cubic": cubic_sparsity, "linear": linear_sparsity}


class GradualPruningCallback(Callback):
    """Drive the selected layers' unstructured sparsity along a schedule during `fit()`.

    Masks are updated at `start_step`, every `frequency` steps after it, and at `end_step`
    (default: the run's last step), then held. Pass `model` to install the (all-ones) masks right
    away: do that before `fit()` builds the optimizer and loads a checkpoint, so resuming restores
    the masks with the model weights and continues the schedule exactly. Without `model` the masks
    are installed on `state.task.eval_model()` when the fit begins (fine for runs that are not resumed).

    Use `TrainConfig(select_best="last")`: picking an earlier "best" epoch would return weights
    from before the final sparsity was reached.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        final_sparsity: float,
        initial_sparsity: float = 0.0,
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 100,
        schedule: Literal["cubic", "linear"] = "cubic",
        method: Literal["magnitude", "random"] = "magnitude",
        scope: Literal["layer", "global"] = "layer",
        targets: Sequence[str] | str | None = None,
        ignore: Sequence[str] | str | None = None,
        seed: int = 0,
    ) -> None:
        check_ratio(final_sparsity, "GradualPruningCallback.final_sparsity")
        check_ratio(initial_sparsity, "GradualPruningCallback.initial_sparsity")
        if initial_sparsity > final_sparsity:
            raise ConfigError(f"GradualPruningCallback: initial_sparsity {initial_sparsity} > final_sparsity {final_sparsity}")
        if frequency < 1 or start_step < 0 or (end_step is not None and end_step < start_step):
            raise ConfigError(
                f"GradualPruningCallback: need frequency >= 1 and 0 <= start_step <= end_step, got "
                f"frequency={frequency}, start_step={start_step}, end_step={end_step}"
            )
        if schedule not in SCHEDULES or method not in ("magnitude", "random") or scope not in ("layer", "global"):
            raise ConfigError(f"GradualPruningCallback: bad schedule/method/scope {schedule!r}/{method!r}/{scope!r}")
        self.final, self.initial = float(final_sparsity), float(initial_sparsity)
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        self.schedule, self.method, self.scope = schedule, method, scope
        self.targets, self.ignore = targets, ignore
        self.generator = torch.Generator().manual_seed(seed)
        self.current = 0.0  # sparsity of the installed masks
        self._model: nn.Module | None = None
        self._layers: dict[str, nn.Module] = {}
        if model is not None:
            self.attach(model)

    def attach(self, model: nn.Module) -> None:
        """Select the layers and install all-ones masks (recorded in the edit log)."""
        self._model = model
        self._layers = select_layers(model, self.targets, self.ignore, maskable_kinds(), "gradual pruning")
        set_masks(model, {n: torch.ones_like(m.weight) for n, m in self._layers.items()})

    def sparsity_at(self, step: int, total_steps: int | None = None) -> float:
        end = self.end_step if self.end_step is not None else (total_steps or self.start_step)
        return SCHEDULES[self.schedule](step, self.start_step, end, self.initial, self.final)

    def update(self, step: int, total_steps: int | None = None) -> None:
        """Re-mask to the schedule's sparsity if `step` is an update step and it grew."""
        if self._model is None:
            raise ConfigError("GradualPruningCallback: no model attached (pass model= or run inside fit())")
        end = self.end_step if self.end_step is not None else (total_steps or self.start_step)
        due = step >= self.start_step and ((step - self.start_step) % self.frequency == 0 or step >= end)
        target = self.sparsity_at(step, total_steps)
        if not due or target <= self.current + 1e-12:
            return
        if self.method == "magnitude":
            scores = magnitude_scores(self._layers)
        else:
            scores = random_scores(self._layers, self.generator)
        set_masks(self._model, masks_from_scores(scores, target, "layer" if self.method == "random" else self.scope))
        self.current = target

    def on_fit_begin(self, state: FitState) -> None:
        if self._model is None:
            self.attach(state.task.eval_model())
        self.update(state.step, state.total_steps)

    def on_step_end(self, state: FitState) -> None:
        self.update(state.step, state.total_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state["current"])
        self.generator.set_state(state["generator"])


class SlimmingCallback(Callback):
    """Network slimming's sparsity penalty (Liu et al. 2017, "Learning Efficient Convolutional
    Networks through Network Slimming"): adds `penalty * sign(gamma)` (the subgradient of
    `penalty * |gamma|_1`) to every selected BatchNorm weight's gradient after backward."""

    def __init__(self, penalty: float = 1e-4, targets: Sequence[str] | str | None = None, ignore: Sequence[str] | str | None = None) -> None:
        if penalty < 0:
            raise ConfigError(f"SlimmingCallback.penalty must be >= 0, got {penalty}")
        self.penalty = float(penalty)
        self.targets, self.ignore = targets, ignore
        self._bns: list[nn.Module] | None = None
        self._model: nn.Module | None = None

    def _select(self, model: nn.Module) -> list[nn.Module]:
        if self._bns is None or self._model is not model:
            kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
            self._bns = [m for m in select_layers(model, self.targets, self.ignore, kinds, "slimming").values() if m.affine]
            self._model = model
        return self._bns

    def apply(self, model: nn.Module) -> None:
        """Add the L1 subgradient to the BN weight gradients of `model` (call after backward)."""
        with torch.no_grad():
            for bn in self._select(model):
                if bn.weight.grad is not None:
                    bn.weight.grad.add_(torch.sign(bn.weight), alpha=self.penalty)

    def on_after_backward(self, state: FitState) -> None:
        self.apply(state.task.eval_model())
