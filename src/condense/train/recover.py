"""Recovery after a structural edit (pruning, low-rank factorization, depth reduction).

An edit that removes capacity costs accuracy; `recover` wins it back through the one `fit()`
loop, either by fine-tuning on the labels (`train_model`) or by distilling from the model as it
was before the edit (`condense.distill.distill_fit`; Hinton KD, `alpha * soft_kd(T) + (1 - alpha)
* ce`, or the cosine embedding loss for an encoder teacher). `prune`, `lowrank` and the depth
reduction share this one implementation and its `RecoverConfig`.

`recalibrate_batchnorm` re-estimates BatchNorm statistics after the edit (adaptive BN, Li et al.
2020 "EagleEye"): removed channels or ranks shift every later layer's input distribution, and
stale statistics alone can take an edited model to chance accuracy.
"""
from __future__ import annotations

import copy
import dataclasses
from itertools import islice
from typing import Any, Literal

import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.data.loader import as_source
from condense.distill import distill_fit
from condense.distill.config import DistillConfig
from condense.models.hf import is_encoder
from condense.models.signature import batch_size_of, batch_to, call_model, model_inputs
from condense.train.config import TrainConfig
from condense.train.fit import train_model

#: What a recovery trains with where `train` does not say (a partial mapping fills in the rest):
#: 5 epochs stretched to at least `min_steps` (500) optimizer steps, lr 1e-3, the last epoch kept.
#: A fixed 5 epochs (before) is 100 steps on 1,295 digits: a hand-written residual CNN with 75 % of
#: its channels pruned recovered to 61.75 % test accuracy with it and 94.15 % with 500 steps
#: (benchmarks/recovery_length.py, 3 seeds; docs/pruning.md, "Recovery length"); on large data
#: (MNIST: 860 steps an epoch) 5 epochs are unchanged.
RECOVER_TRAIN: dict[str, Any] = {"auto_epochs": 5, "lr": 1e-3, "select_best": "last"}


def _default_train() -> TrainConfig:
    return TrainConfig(**RECOVER_TRAIN)


@dataclasses.dataclass
class RecoverConfig(Config):
    """How an edited (pruned, factorized, shallower) model gets its accuracy back.

    `method`: "finetune" (cross-entropy on the labels), "distill" (from the unedited model:
    `alpha * soft_kd(temperature) + (1 - alpha) * ce`), or "none". `train` holds the optimizer,
    length and seed of the recovery run (default `RECOVER_TRAIN`: 5 epochs, at least 500
    optimizer steps, lr 1e-3, last epoch kept: a small validation set saturates early and "best"
    would pick an under-recovered epoch); a partial `train` mapping fills in the rest.
    `bn_batches`: before recovery, BatchNorm running statistics are re-estimated on this many
    training batches (no gradients; 0 = off). `keep_masks=True` leaves unstructured pruning masks
    installed (for further pruning); by default they are made permanent so the model saves and
    exports. `losses` (distill): the distillation losses (`DistillConfig.losses`); by default
    the Hinton mix above, or for an encoder teacher (an hf: sentence-embedding / hidden-states
    model, which has no class scores) the cosine embedding loss.
    """

    method: Literal["finetune", "distill", "none"] = "finetune"
    alpha: float = 0.9
    temperature: float = 4.0
    train: TrainConfig = dataclasses.field(default_factory=_default_train)
    bn_batches: int = 8
    keep_masks: bool = False
    losses: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):  # a partial mapping overrides the recovery defaults only
            self.train = {**RECOVER_TRAIN, **self.train}
        super().__post_init__()

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"RecoverConfig.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"RecoverConfig.temperature must be > 0, got {self.temperature}")
        if self.bn_batches < 0:
            raise ConfigError(f"RecoverConfig.bn_batches must be >= 0, got {self.bn_batches}")
        if self.losses:  # built now (DistillConfig's check): a misspelt loss fails recipe validation, not mid-run
            try:
                DistillConfig(losses=list(self.losses))
            except ConfigError as e:
                raise ConfigError(f"RecoverConfig.{str(e).removeprefix('DistillConfig.')}") from None

    def distill_config(self, teacher: nn.Module | None = None) -> Any:
        losses = self.losses
        if losses is None and is_encoder(teacher):
            losses = [{"name": "embedding", "kind": "cosine"}]
        return DistillConfig(losses=list(losses or []), alpha=self.alpha, temperature=self.temperature, train=self.train)


def recover_config(config: RecoverConfig | dict[str, Any] | None) -> RecoverConfig:
    """A RecoverConfig from an object, a mapping, or None (the defaults)."""
    if config is None:
        return RecoverConfig()
    if isinstance(config, dict):
        return RecoverConfig.from_dict(config)
    if not isinstance(config, RecoverConfig):
        raise ConfigError(f"recover config must be a RecoverConfig or a mapping, got {type(config).__name__}")
    return config


def check_recovery_data(rcfg: RecoverConfig, train_data: Any | None) -> None:
    if rcfg.method != "none" and (train_data is None or len(train_data) == 0):
        raise ConfigError(f"recovery {rcfg.method!r} needs training data")


def recovery_teacher(model: nn.Module, rcfg: RecoverConfig, teacher: nn.Module | None = None) -> nn.Module | None:
    """The frozen teacher of a "distill" recovery: `teacher`, else a deep copy of `model` taken
    now (call it before editing the model); None for the other methods."""
    if rcfg.method != "distill":
        return None
    teacher = copy.deepcopy(model) if teacher is None else teacher
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def recover(model: nn.Module, rcfg: RecoverConfig, train_data: Any, val_data: Any | None = None, *,
            teacher: nn.Module | None = None, resume: bool = False) -> tuple[nn.Module, dict[str, Any] | None]:
    """Run the recovery `rcfg` asks for through `fit()`; return `(model, fit summary or None)`."""
    if rcfg.method == "finetune":
        result = train_model(model, train_data, rcfg.train, val_data, resume=resume)
    elif rcfg.method == "distill":
        if teacher is None:
            raise ConfigError("recovery 'distill' needs the unedited model as teacher (recovery_teacher before the edit)")
        result = distill_fit(model, teacher, train_data, rcfg.distill_config(teacher), val_data, resume=resume)
    else:
        return model, None
    return result.model, {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "steps": result.steps,
                          "history": result.history}


def recalibrate_batchnorm(model: nn.Module, data: Any, batches: int = 8, batch_size: int = 64, seed: int = 0) -> int:
    """Re-estimate every BatchNorm's running mean / variance on `batches` shuffled training batches.

    `data`: anything `condense.data.loader.as_source` takes, or a list of batch dicts used in
    order as they are. Only the statistics change (cumulative average, no gradients, other layers
    in eval mode so dropout is off); returns the number of samples seen (0 when the model has no
    BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches < 1:
        return 0
    if isinstance(data, list | tuple) and all(isinstance(b, dict) for b in data):
        if not data:
            return 0
        stream: Any = data
    else:
        source = as_source(data)
        if len(source) == 0:
            return 0
        stream = source.batches(batch_size, shuffle=True, seed=seed)
    was = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
            m.train()
        with torch.no_grad():
            for batch in islice(stream, batches):
                call_model(model, batch_to(model_inputs(model, batch), device))
                seen += batch_size_of(model_inputs(model, batch))
    finally:
        for m, mom in zip(norms, momenta, strict=True):
            m.momentum = mom
        for m, mode in was.items():
            m.training = mode
    return seen
