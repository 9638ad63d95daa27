"""Training settings shared by every task that runs through `fit()`."""
from __future__ import annotations

import dataclasses
from typing import Literal

from condense.core.config import Config
from condense.core.errors import ConfigError


@dataclasses.dataclass
class TrainConfig(Config):
    """Optimizer, schedule, length, device and bookkeeping for one `fit()` run.

    Length is exactly `max_steps` optimizer steps when set, else `epochs` when set; with neither
    (the default) it is `auto_epochs` (10) epochs stretched to whole epochs of at least
    `min_steps` optimizer steps, so small data trains long enough (`condense.train.length`; a run
    shorter than its warm-up or under 100 steps warns). `drop_last: "auto"` drops the last partial batch only when
    it is at most 2 % of the training set.
    `warmup_steps` ramps the learning rate linearly from 0. `checkpoint_dir` enables an atomic
    checkpoint at each epoch end and `resume`. `select_best` picks the weights returned at the
    end by a *validation* metric (never test data); "last" keeps the final weights.
    """

    epochs: int | None = None  # None: `auto_epochs` epochs, at least `min_steps` optimizer steps
    max_steps: int | None = None
    min_steps: int = 500  # only when neither `epochs` nor `max_steps` is set
    auto_epochs: int = 10  # epochs before the `min_steps` floor, when neither is set
    batch_size: int = 64
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 0
    step_size: int = 10  # epochs between decays for schedule="step"
    gamma: float = 0.1
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 autocast on CUDA, off on CPU
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    # Data loading for map-style Datasets (ArrayDatasets are sliced in memory and ignore both):
    # worker processes decoding items, and page-locked batches for fast host-to-GPU copies
    # (None: on when training on CUDA).
    num_workers: int = 0
    pin_memory: bool | None = None
    # torch.compile the trained model's forward (nn.Module.compile: state_dict keys unchanged).
    compile: bool = False
    # DDP only: let DistributedDataParallel find parameters a step did not use (slower; needed
    # when a task leaves some trainable parameter out of a step's graph).
    find_unused_parameters: bool = False
    # Drop the last incomplete batch of each epoch (reshuffled every epoch, so no sample is lost
    # for good): a tiny last batch gives BatchNorm noisy statistics and cost several points of
    # accuracy on digits (docs/distillation.md, "why KD looked slow"). "auto" drops it only when
    # it holds at most 2 % of the set: never 57 of 377 images (15 % of a small set, every epoch).
    drop_last: bool | Literal["auto"] = "auto"
    select_best: Literal["val_accuracy", "val_loss", "last"] = "val_accuracy"
    checkpoint_dir: str | None = None
    log_file: str | None = None  # JSONL metrics log; default <checkpoint_dir>/metrics.jsonl
    # "auto": a bar on a terminal, log lines otherwise; True / False (as users and YAML's
    # `progress: off` write it) mean "auto" / "off" and are stored as those names.
    progress: bool | Literal["auto", "bar", "log", "off"] = "auto"
    max_nonfinite_steps: int = 5  # consecutive non-finite losses before stopping with an error

    def validate(self) -> None:
        if isinstance(self.progress, bool):
            self.progress = "auto" if self.progress else "off"
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"TrainConfig.max_steps must be >= 1, got {self.max_steps}")
        if self.min_steps < 1:
            raise ConfigError(f"TrainConfig.min_steps must be >= 1, got {self.min_steps}")
        if self.auto_epochs < 1:
            raise ConfigError(f"TrainConfig.auto_epochs must be >= 1, got {self.auto_epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"TrainConfig.grad_clip must be > 0, got {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ConfigError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"TrainConfig.threads must be >= 1, got {self.threads}")
        if self.num_workers < 0:
            raise ConfigError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.max_nonfinite_steps < 1:
            raise ConfigError(f"TrainConfig.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
