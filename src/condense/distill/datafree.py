"""Data-free distillation: synthesize inputs from a teacher's BatchNorm statistics, then distill on them.

The input synthesis is the one optimisation loop outside `fit()`, on purpose: it optimises a
batch of *inputs* against a frozen network, with no data, epochs, validation or checkpoints, so
none of the loop's machinery applies. The distillation on the synthesized set runs through
`fit()` like every other training.

DeepInversion (Yin et al. 2020, "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR) optimises a batch of inputs, starting from Gaussian noise, so that

    loss = ce_weight  * CE(teacher(x_jittered), chosen classes)
         + bn_weight  * sum_l m_l (||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2)
         + tv_weight  * total_variation_l2(x) + l2_weight * mean_i ||x_i||_2

where mu_l / var_l are the batch statistics of the input of the teacher's l-th BatchNorm layer
(read with forward hooks; the teacher stays in eval mode and is never modified), m_1 =
`first_bn_multiplier` and m_l = 1 after. Random jitter (a roll by up to `jitter` pixels) and
optional flips are applied at each step, as in the paper. The student is then distilled on the
synthesized set through the ordinary `distill()` (label-free by default, alpha = 1): no training
image is ever read.

    student = datafree_distill(student, teacher, DataFreeConfig(input_shape=[1, 8, 8]))
"""
from __future__ import annotations

import dataclasses
import math
import random
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.data.base import ArrayDataset
from condense.distill.api import distill
from condense.distill.config import DistillConfig


def _label_free() -> DistillConfig:
    return DistillConfig(alpha=1.0)


@dataclasses.dataclass
class DataFreeConfig(Config):
    """DeepInversion synthesis + distillation settings.

    `input_shape`: one sample's shape, e.g. [1, 8, 8] (required: a teacher does not say it).
    `num_samples` inputs are synthesized in independent batches of `batch_size`, each optimised
    for `iterations` Adam steps at `lr` (cosine decay). Target classes are balanced
    (`num_samples / num_classes` each, shuffled by `seed`). `clamp: [low, high]` keeps inputs in
    the valid (normalised) range after every step. `jitter`: random roll by up to that many
    pixels per step (the paper uses 30 at 224 px, 2 at 32 px; on 8x8 digits any jitter hurt, so
    the default is 0). Defaults were tuned on digits (benchmarks/datafree_digits.py). `distill` is the ordinary DistillConfig used
    on the synthesized set (default label-free, alpha = 1).
    """

    input_shape: list[int] = dataclasses.field(default_factory=list)
    num_samples: int = 1024
    batch_size: int = 256
    iterations: int = 200
    lr: float = 0.25
    bn_weight: float = 0.3
    first_bn_multiplier: float = 1.0
    ce_weight: float = 1.0
    tv_weight: float = 1e-3
    l2_weight: float = 1e-4
    jitter: int = 0
    flip: bool = False
    clamp: list[float] | None = None
    seed: int = 0
    distill: DistillConfig = dataclasses.field(default_factory=_label_free)

    def __post_init__(self) -> None:
        # a partial `distill:` mapping (recipes) stays label-free unless it says otherwise
        if isinstance(self.distill, dict) and "alpha" not in self.distill and "losses" not in self.distill:
            self.distill = {**self.distill, "alpha": 1.0}
        super().__post_init__()

    def validate(self) -> None:
        if not self.input_shape or any(s < 1 for s in self.input_shape):
            raise ConfigError(
                f"DataFreeConfig.input_shape must list one sample's positive dimensions (e.g. [1, 8, 8]), got {self.input_shape}"
            )
        for name in ("num_samples", "batch_size", "iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DataFreeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"DataFreeConfig.lr must be > 0, got {self.lr}")
        for name in ("bn_weight", "first_bn_multiplier", "ce_weight", "tv_weight", "l2_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"DataFreeConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.jitter < 0:
            raise ConfigError(f"DataFreeConfig.jitter must be >= 0, got {self.jitter}")
        if self.clamp is not None and (len(self.clamp) != 2 or not self.clamp[0] < self.clamp[1]):
            raise ConfigError(f"DataFreeConfig.clamp must be [low, high] with low < high, got {self.clamp}")


# -- losses -----------------------------------------------------------------------------------------
def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer of `model` that tracks running statistics, in module order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]


def bn_feature_loss(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """||mean(x) - running_mean||_2 + ||var(x) - running_var||_2 over the channel dimension 1
    (biased batch variance, as BatchNorm normalises with)."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    return torch.linalg.vector_norm(mean - running_mean, 2) + torch.linalg.vector_norm(var - running_var, 2)


class BNStatisticsLoss:
    """Forward hooks on every BatchNorm layer: after a forward pass, `loss()` is DeepInversion's
    feature-distribution regulariser, sum_l m_l * bn_feature_loss(input_l), m_1 = `first_multiplier`.

    >>> with BNStatisticsLoss(teacher) as bn:
    ...     logits = teacher(x)
    ...     r = bn.loss()
    """

    def __init__(self, model: nn.Module, first_multiplier: float = 1.0) -> None:
        self.layers = bn_layers(model)
        if not self.layers:
            raise ConfigError(
                "the teacher has no BatchNorm layers with running statistics; DeepInversion synthesizes "
                "inputs by matching them"
            )
        self.first_multiplier = float(first_multiplier)
        self.per_layer: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: object) -> None:
            self.per_layer[name] = bn_feature_loss(inputs[0].float(), module.running_mean.float(), module.running_var.float())

        return hook

    def loss(self) -> torch.Tensor:
        missing = [n for n, _ in self.layers if n not in self.per_layer]
        if missing:
            raise ConfigError(f"BatchNorm layers {missing} did not run in the last forward pass")
        terms = [self.per_layer[n] * (self.first_multiplier if i == 0 else 1.0) for i, (n, _) in enumerate(self.layers)]
        return torch.stack(terms).sum()

    def clear(self) -> None:
        self.per_layer.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> BNStatisticsLoss:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()


@torch.no_grad()
def bn_statistics_loss(model: nn.Module, x: torch.Tensor, first_multiplier: float = 1.0, batch_size: int = 1024) -> float:
    """The BN-statistics loss of inputs `x` on `model` (eval mode; a measurement, no gradients).

    Statistics are taken over the whole of `x` when it fits in one `batch_size`, else averaged
    over batches.
    """
    was = model.training
    model.eval()
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    total, n = 0.0, 0
    try:
        with BNStatisticsLoss(model, first_multiplier) as bn:
            for start in range(0, len(x), batch_size):
                xb = x[start:start + batch_size].to(device)
                model(xb)
                total += float(bn.loss()) * len(xb)
                n += len(xb)
    finally:
        model.train(was)
    return total / max(n, 1)


def total_variation_l2(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's l2 image prior: norms of horizontal, vertical and both diagonal neighbour
    differences of (N, C, H, W) images (0 for inputs that are not images)."""
    if x.dim() != 4:
        return x.new_zeros(())
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))  # type: ignore[return-value]


# -- synthesis --------------------------------------------------------------------------------------
@dataclasses.dataclass
class SynthesisResult:
    """The synthesized inputs (`data.targets` = the classes they were optimised towards) and per-batch
    statistics: BN loss at the start (noise) and end, and the teacher's agreement with the targets."""

    data: ArrayDataset
    batches: list[dict[str, float]]

    def summary(self) -> dict[str, Any]:
        b = self.batches
        return {
            "samples": len(self.data),
            "bn_loss_start": sum(d["bn_loss_start"] for d in b) / len(b),
            "bn_loss_end": sum(d["bn_loss_end"] for d in b) / len(b),
            "teacher_agreement": sum(d["teacher_agreement"] * d["size"] for d in b) / len(self.data),
        }


def _num_classes(teacher: nn.Module, shape: list[int], device: torch.device) -> int:
    with torch.no_grad():
        out = teacher(torch.zeros(2, *shape, device=device))
    if out.dim() != 2:
        raise ConfigError(f"data-free synthesis needs a classifier teacher with (N, classes) outputs, got shape {tuple(out.shape)}")
    return int(out.shape[1])


def _balanced_targets(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.arange(n) % k)[torch.randperm(n, generator=gen)]


def _jitter(x: torch.Tensor, cfg: DataFreeConfig, rng: random.Random) -> torch.Tensor:
    if x.dim() == 4 and cfg.jitter > 0:
        dy, dx = rng.randint(-cfg.jitter, cfg.jitter), rng.randint(-cfg.jitter, cfg.jitter)
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if x.dim() == 4 and cfg.flip and rng.random() < 0.5:
        x = torch.flip(x, dims=(3,))
    return x


def synthesize(teacher: nn.Module, config: DataFreeConfig) -> SynthesisResult:
    """DeepInversion: `config.num_samples` inputs optimised from noise against the frozen `teacher`."""
    device = next((t.device for t in [*teacher.parameters(), *teacher.buffers()]), torch.device("cpu"))
    was = teacher.training
    teacher.eval()
    grads = [p for p in teacher.parameters() if p.requires_grad]  # frozen during synthesis, restored after
    for p in grads:
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    shape = list(config.input_shape)
    inputs, targets, stats = [], [], []
    try:
        k = _num_classes(teacher, shape, device)
        all_targets = _balanced_targets(config.num_samples, k, gen)
        with BNStatisticsLoss(teacher, config.first_bn_multiplier) as bn:
            for start in range(0, config.num_samples, config.batch_size):
                y = all_targets[start:start + config.batch_size].to(device)
                x = torch.randn(len(y), *shape, generator=gen).to(device).requires_grad_(True)
                opt = torch.optim.Adam([x], lr=config.lr, betas=(0.5, 0.9), eps=1e-8)
                first = last = 0.0
                for it in range(config.iterations):
                    for g in opt.param_groups:
                        g["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * it / config.iterations))
                    xj = _jitter(x, config, rng)
                    logits = teacher(xj)
                    r_bn = bn.loss()
                    loss = (config.ce_weight * F.cross_entropy(logits, y) + config.bn_weight * r_bn
                            + config.tv_weight * total_variation_l2(xj)
                            + config.l2_weight * torch.linalg.vector_norm(xj.flatten(1), dim=1).mean())
                    if it == 0:
                        first = float(r_bn.detach())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if config.clamp is not None:
                        with torch.no_grad():
                            x.clamp_(config.clamp[0], config.clamp[1])
                with torch.no_grad():
                    logits = teacher(x)
                    last = float(bn.loss())
                    agree = float((logits.argmax(1) == y).float().mean())
                stats.append({"size": len(y), "bn_loss_start": first, "bn_loss_end": last, "teacher_agreement": agree})
                inputs.append(x.detach().cpu())
                targets.append(y.cpu())
    finally:
        for p in grads:
            p.requires_grad_(True)
        teacher.train(was)
    x_all = torch.cat(inputs)
    return SynthesisResult(ArrayDataset(x_all, torch.cat(targets), torch.arange(len(x_all))), stats)


def datafree_distill(
    student: nn.Module,
    teacher: nn.Module,
    config: DataFreeConfig,
    *,
    synthetic: ArrayDataset | None = None,
) -> nn.Module:
    """Distill `teacher` into `student` with no training data: synthesize inputs (or use the given
    `synthetic` set from `synthesize`) and run `distill()` on them with `config.distill`.

    There is no validation data (none is real), so the last weights are returned.
    """
    if synthetic is None:
        synthetic = synthesize(teacher, config).data
    train = config.distill.train.replace(select_best="last")
    return distill(student, teacher, synthetic, config.distill.replace(train=train.to_dict()))


__all__ = [
    "BNStatisticsLoss",
    "DataFreeConfig",
    "SynthesisResult",
    "bn_feature_loss",
    "bn_layers",
    "bn_statistics_loss",
    "datafree_distill",
    "synthesize",
    "total_variation_l2",
]
