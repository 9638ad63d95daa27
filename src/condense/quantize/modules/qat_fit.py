"""QAT end to end: prepare -> train with the one `fit()` loop -> convert to integer layers.

`qat_fit(model, train_data, QATConfig(bits=4), TrainConfig(epochs=3))` is what `condense quantize
--method qat` and a recipe `quantize` stage with `method: qat` run:

1. `prepare_qat` wraps the layers with LSQ fake-quantizers (Esser et al. 2020) and initialises
   the step sizes on one calibration batch (by default the first samples of `train_data`);
2. `fit()` trains the wrapped model -- by default distilling the float model it started from
   (Hinton et al. 2015; QAT with the full-precision network as teacher follows Mishra & Marr
   2018, "Apprentice"), else on the labels alone -- with BatchNorm statistics frozen half-way
   (Jacob et al. 2018 sec. 3.2) and the step sizes frozen for the last epoch;
3. `convert_qat` folds BatchNorm and returns the same `QuantWrapper` layers static PTQ produces,
   so `export_int8_onnx` writes it as a QDQ int8 ONNX file.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from condense.core.errors import ConfigError
from condense.data.loader import as_source, example_inputs, heldout_inputs
from condense.distill import DistillConfig, distill_fit
from condense.quantize.modules.qat import (
    FreezeBatchNormCallback,
    FreezeObserversCallback,
    QATConfig,
    prepare_qat,
)
from condense.quantize.modules.qat_convert import convert_qat
from condense.train.callbacks import Callback
from condense.train.config import TrainConfig
from condense.train.fit import FitResult, train_model
from condense.train.length import run_length

__all__ = ["QATResult", "qat_fit", "qat_schedule"]

#: samples of the training data that initialise the step sizes when no calibration is given
INIT_SAMPLES = 256


@dataclasses.dataclass
class QATResult:
    """`model`: the converted integer model (QuantWrappers, BN folded); `fit`: the training run."""

    model: nn.Module
    fit: FitResult
    schedule: dict[str, int | None]
    distilled: bool

    def to_dict(self) -> dict[str, Any]:
        return {"fit": self.fit.to_dict(), "schedule": self.schedule, "distilled": self.distilled,
                "best_epoch": self.fit.best_epoch}


def qat_schedule(config: QATConfig, epochs: int) -> dict[str, int | None]:
    """The 0-based epochs at which BatchNorm and the step sizes freeze (None: never)."""
    bn = epochs // 2 if config.freeze_bn_epoch is None else config.freeze_bn_epoch
    steps = (epochs - 1 if epochs >= 2 else None) if config.freeze_steps_epoch is None else config.freeze_steps_epoch
    for field, v in (("freeze_bn_epoch", bn), ("freeze_steps_epoch", steps)):
        if v is not None and v >= epochs:
            raise ConfigError(f"QATConfig.{field} is {v} but training runs {epochs} epoch(s) (0-based: "
                              f"0..{epochs - 1}); lower it or train longer")
    return {"freeze_bn_epoch": bn, "freeze_steps_epoch": steps}


def qat_fit(
    model: nn.Module,
    train_data: Any,
    config: QATConfig | None = None,
    train: TrainConfig | None = None,
    val_data: Any | None = None,
    *,
    calibration: Any = None,
    example: Any = None,
    callbacks: list[Callback] | None = None,
    resume: bool = False,
) -> QATResult:
    """Quantization-aware training of `model` (untouched) on `train_data`; see the module docstring.

    `calibration` initialises the step sizes (default: the first 256 training inputs);
    `example` is one input for the BatchNorm-pair trace at convert time (default: the first
    training input). With `resume` the run continues from `train.checkpoint_dir`.
    """
    config = config or QATConfig()
    train = train or TrainConfig(epochs=3, lr=5e-4)
    epochs = train.epochs
    if epochs is None:  # the run's length follows from the data (TrainConfig's min_steps floor)
        epochs = run_length(train, len(as_source(train_data))).epochs
    schedule = qat_schedule(config, epochs)
    init = calibration if calibration is not None else heldout_inputs(train_data, INIT_SAMPLES)
    prepared = prepare_qat(model, config, calibration=init)
    cbs: list[Callback] = list(callbacks or [])
    if schedule["freeze_bn_epoch"] is not None:
        cbs.append(FreezeBatchNormCallback(at_epoch=schedule["freeze_bn_epoch"]))
    if schedule["freeze_steps_epoch"] is not None:
        cbs.append(FreezeObserversCallback(at_epoch=schedule["freeze_steps_epoch"]))
    if config.distill:
        dcfg = DistillConfig(alpha=config.alpha, temperature=config.temperature, train=train)
        result = distill_fit(prepared, model, train_data, dcfg, val_data, callbacks=cbs, resume=resume)
    else:
        result = train_model(prepared, train_data, train, val_data, cbs, resume=resume)
    if example is None:
        example = example_inputs(train_data, 1)
    converted = convert_qat(result.model.eval(), example=example)
    return QATResult(model=converted, fit=result, schedule=schedule, distilled=config.distill)
