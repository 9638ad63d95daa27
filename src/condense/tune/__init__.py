"""Accuracy-aware auto-tuning: search compression settings under an accuracy tolerance.

Given a baseline model, `tune()` tries combinations of structured-pruning ratio, recovery
method and int8 quantization (a grid, shuffled by the seed, cut to `max_trials`), measures each
trial's *validation* accuracy and its objective (latency on a named runtime at a batch size, or
bytes on disk of the deployed file), and returns the Pareto set plus the chosen trial: the best
objective among trials within `tolerance` points of the baseline. If no trial is within the
tolerance, the most accurate trial is kept and the result says so: the search never ends with
nothing. Test accuracy is reported for the chosen model only after the choice is made.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import random
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.data.base import Splits
from condense.data.loader import as_source, example_inputs, heldout_inputs
from condense.evaluate import evaluate, profile
from condense.export import export_onnx
from condense.prune import PruneConfig, make_permanent
from condense.prune.recover import RecoverConfig, prune_and_recover
from condense.quantize import QuantizeConfig, export_int8_onnx, quantize
from condense.train.config import TrainConfig


@dataclasses.dataclass
class TuneConfig(Config):
    """Search space, objective and budget of `tune()`.

    `tolerance`: allowed validation-accuracy drop in percentage points below the baseline.
    `objective`: "latency" (p50 ms on `runtime` at `batch_size`) or "bytes" (deployed ONNX file).
    """

    tolerance: float = 0.5
    objective: Literal["latency", "bytes"] = "latency"
    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"
    batch_size: int = 256
    prune_ratios: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.25, 0.5])
    recover: list[str] = dataclasses.field(default_factory=lambda: ["distill"])
    quantize: list[bool] = dataclasses.field(default_factory=lambda: [False, True])
    round_to: int = 8
    max_trials: int = 6
    repeats: int = 10
    threads: int | None = None
    seed: int = 0
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=5, lr=2e-3, progress="off"))

    def validate(self) -> None:
        if self.tolerance < 0:
            raise ConfigError(f"TuneConfig.tolerance must be >= 0 (points of accuracy), got {self.tolerance}")
        if self.max_trials < 1:
            raise ConfigError(f"TuneConfig.max_trials must be >= 1, got {self.max_trials}")
        if not self.prune_ratios or any(not 0.0 <= r < 1.0 for r in self.prune_ratios):
            raise ConfigError(f"TuneConfig.prune_ratios must be in [0, 1), got {self.prune_ratios}")
        for r in self.recover:
            if r not in ("finetune", "distill", "none"):
                raise ConfigError(f"TuneConfig.recover entries must be finetune, distill or none, got {r!r}")
        if self.batch_size < 1:
            raise ConfigError(f"TuneConfig.batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass
class TuneResult:
    baseline: dict[str, Any]
    trials: list[dict[str, Any]]
    pareto: list[int]  # trial numbers on the (val accuracy, objective) Pareto front
    chosen: int  # trial number of the returned model
    met_tolerance: bool
    message: str
    model: nn.Module

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "trials": self.trials, "pareto": self.pareto, "chosen": self.chosen,
                "met_tolerance": self.met_tolerance, "message": self.message}


def _candidates(cfg: TuneConfig) -> list[dict[str, Any]]:
    grid = []
    for ratio, rec, q in itertools.product(cfg.prune_ratios, cfg.recover, cfg.quantize):
        if ratio == 0.0 and rec != cfg.recover[0]:
            continue  # nothing to recover from
        if ratio == 0.0 and not q:
            continue  # that is the baseline itself
        grid.append({"prune_ratio": ratio, "recover": rec if ratio > 0 else "none", "quantize": q})
    random.Random(cfg.seed).shuffle(grid)
    return grid[: cfg.max_trials]


def _objective(model: nn.Module, onnx_path: Path, example: torch.Tensor, cfg: TuneConfig) -> float:
    if cfg.objective == "bytes":
        return float(onnx_path.stat().st_size)
    prof = profile(model, example, runtimes=(cfg.runtime,), batch_sizes=(cfg.batch_size,), threads=cfg.threads,
                   onnx_path=onnx_path if cfg.runtime == "onnxruntime" else None, repeats=cfg.repeats)
    return float(prof["latency"][cfg.runtime][str(cfg.batch_size)]["p50_ms"])


def _deploy(model: nn.Module, quantized: bool, example: torch.Tensor, val_inputs: torch.Tensor, folder: Path) -> Path:
    if quantized:
        return Path(export_int8_onnx(model, example, folder / "model.int8.onnx", heldout=val_inputs[:256]).path)
    return Path(export_onnx(model, example, folder / "model.onnx").path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (higher accuracy, lower cost)."""
    front = []
    for i, (acc, cost) in enumerate(points):
        if not any((a >= acc and c <= cost) and (a > acc or c < cost) for j, (a, c) in enumerate(points) if j != i):
            front.append(i)
    return front


def tune(model: nn.Module, splits: Splits, config: TuneConfig | None = None) -> TuneResult:
    """Search compression settings for `model`; return the Pareto set and the chosen model."""
    cfg = config or TuneConfig()
    if len(as_source(splits.val)) == 0:
        raise ConfigError("tune(): needs a labelled validation split to choose on (never the test split)")
    example = example_inputs(splits.test, 1)
    with tempfile.TemporaryDirectory(prefix="condense-tune-") as tmp:
        return _tune(model, splits, cfg, Path(tmp), example)


def _tune(model: nn.Module, splits: Splits, cfg: TuneConfig, work: Path, example: torch.Tensor) -> TuneResult:
    base_val = evaluate(model, splits.val)["accuracy"]
    base_onnx = _deploy(model, False, example, heldout_inputs(splits.val), work / "baseline")
    baseline = {"val_accuracy": base_val, "objective": _objective(model, base_onnx, example, cfg)}
    trials: list[dict[str, Any]] = []
    models: list[nn.Module] = []
    for n, cand in enumerate(_candidates(cfg)):
        torch.manual_seed(cfg.seed + n)
        m = copy.deepcopy(model)
        info: dict[str, Any] = {}
        if cand["prune_ratio"] > 0:
            pc = PruneConfig.from_dict({"method": "channel", "ratio": cand["prune_ratio"], "round_to": cfg.round_to})
            rc = RecoverConfig.from_dict({"method": cand["recover"], "train": cfg.train.to_dict()})
            m, info = prune_and_recover(m, pc, rc, splits.train, splits.val, example_inputs=example)
            make_permanent(m)
        if cand["quantize"]:
            m = quantize(m, QuantizeConfig(method="static"), calibration=splits.train)
        onnx_path = _deploy(m, cand["quantize"], example, heldout_inputs(splits.val), work / f"trial{n}")
        val_acc = evaluate(onnx_path, splits.val)["accuracy"] if cand["quantize"] else evaluate(m, splits.val)["accuracy"]
        trials.append({"trial": n, **cand, "val_accuracy": val_acc, "objective": _objective(m, onnx_path, example, cfg),
                       "bytes": onnx_path.stat().st_size, "params": sum(p.numel() for p in m.parameters()),
                       "within_tolerance": 100 * (base_val - val_acc) <= cfg.tolerance})
        models.append(m)
    front = [trials[i]["trial"] for i in pareto_front([(t["val_accuracy"], t["objective"]) for t in trials])]
    ok = [t for t in trials if t["within_tolerance"]]
    unit = "ms" if cfg.objective == "latency" else "bytes"
    if ok:
        best = min(ok, key=lambda t: (t["objective"], -t["val_accuracy"]))
        msg = (f"chose trial {best['trial']}: {best['objective']:.4g} {unit} vs baseline {baseline['objective']:.4g} "
               f"({best['objective'] / baseline['objective']:.2f}x), val accuracy {best['val_accuracy']:.4f} "
               f"(baseline {base_val:.4f}, tolerance {cfg.tolerance} pt)")
    else:
        best = max(trials, key=lambda t: (t["val_accuracy"], -t["objective"]))
        msg = (f"no trial stayed within {cfg.tolerance} pt of the baseline's validation accuracy ({base_val:.4f}); "
               f"kept the most accurate trial {best['trial']} ({best['val_accuracy']:.4f}). Widen the tolerance, "
               "lower the pruning ratios or train recovery longer.")
    chosen = models[best["trial"]]
    best["test_accuracy"] = (evaluate(_deploy(chosen, best["quantize"], example, heldout_inputs(splits.val), work / "chosen"), splits.test)
                             ["accuracy"])
    return TuneResult(baseline, trials, front, best["trial"], bool(ok), msg, chosen)


__all__ = ["TuneConfig", "TuneResult", "pareto_front", "tune"]
