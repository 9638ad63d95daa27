"""Self-supervised tasks: what one `fit()` step computes for each method. No task reads labels.

Every task embeds a batch through the encoder's `layer` (a `FeatureTap`, so model code is never
edited), trains the encoder plus its heads (`extra_modules`) and returns `{"loss": ...}`.
`METHODS` maps a `PretrainConfig.method` name to its task class; each class builds itself from a
config and one sample batch (`build`), so head sizes come from observed shapes.

- `SimCLRTask`: two views -> encoder -> projection MLP -> NT-Xent (Chen et al. 2020).
- `BYOLTask`: online encoder + projector + predictor regress an EMA target's projection of the
  other view (Grill et al. 2020); the target is a frozen copy moved by `EMATarget`.
- `MAETask`: hide patches, embed, decode every pixel, score the hidden ones (He et al. 2022).
- `SSLDistillTask`: a frozen teacher's embedding taught to a student through an adapter, with
  cosine / MSE matching plus SEED's similarity distribution over a queue (Fang et al. 2021).
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.core.registry import Registry
from condense.core.taps import FeatureTap
from condense.distill.adapters import make_projector
from condense.ssl.callbacks import EMATarget
from condense.ssl.heads import MLPHead, PixelDecoder
from condense.ssl.losses.byol import byol_loss
from condense.ssl.losses.embed import embedding_loss
from condense.ssl.losses.mae import masked_reconstruction_loss, random_patch_mask
from condense.ssl.losses.ntxent import nt_xent_loss
from condense.ssl.losses.seed import SEEDLoss
from condense.ssl.views import build_views
from condense.train.callbacks import Callback
from condense.train.task import TaskBase

if TYPE_CHECKING:
    from condense.ssl.config import PretrainConfig, SSLDistillConfig


@torch.no_grad()
def observe(model: nn.Module, layer: str, sample: torch.Tensor) -> tuple[torch.Size, torch.Size]:
    """(shape of `layer`'s output, shape of the model's output) on `sample`, in eval mode.

    Eval mode and no_grad, so the dry run leaves BatchNorm statistics untouched.
    """
    was_training = model.training
    model.eval()
    try:
        with FeatureTap(model, [layer], detach=True) as tap:
            out = model(sample)
            feat = tap[layer]
    finally:
        model.train(was_training)
    return feat.shape, out.shape if isinstance(out, torch.Tensor) else torch.Size()


def _width(shape: torch.Size) -> int:
    return int(math.prod(shape[1:]))


class SSLTask(TaskBase):
    """Base of the self-supervised tasks: an encoder tapped at `layer`, heads, optional views."""

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        extra_modules: dict[str, nn.Module] | None = None,
        frozen_modules: dict[str, nn.Module] | None = None,
        views: nn.Module | None = None,
    ) -> None:
        super().__init__(model, extra_modules, frozen_modules)
        self.layer = layer
        self.views = views
        self._taps: list[FeatureTap] = []
        self.tap = self.add_tap(model, layer)

    def add_tap(self, model: nn.Module, layer: str, *, detach: bool = False) -> FeatureTap:
        tap = FeatureTap(model, [layer], detach=detach)
        self._taps.append(tap)
        return tap

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return self.views(x) if self.views is not None else x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's `(B, D)` embedding of `x` (the tapped layer's output, flattened)."""
        self.model(x)
        return self.tap[self.layer].flatten(1)

    def callbacks(self) -> list[Callback]:
        """Callbacks the method needs in `fit()` (EMA targets); run before the user's."""
        return []

    def close(self) -> None:
        """Remove every forward hook this task put on the models."""
        for tap in self._taps:
            tap.remove()
        self._taps.clear()


class SimCLRTask(SSLTask):
    """SimCLR: NT-Xent between the projections of two random views of each image."""

    def __init__(self, model: nn.Module, config: PretrainConfig, embed_dim: int) -> None:
        projector = MLPHead(embed_dim, config.hidden_dim, config.projection_dim)
        super().__init__(model, config.layer, {"projector": projector}, views=build_views(config.views))
        self.projector = projector
        self.temperature = config.temperature

    @classmethod
    def build(cls, model: nn.Module, config: PretrainConfig, sample: torch.Tensor) -> SimCLRTask:
        return cls(model, config, _width(observe(model, config.layer, sample)[0]))

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        x = batch["input"]
        n = x.shape[0]
        # one call draws both views: every sample of the doubled batch gets its own random transform
        z = self.projector(self.embed(self.view(torch.cat([x, x]))))
        return {"loss": nt_xent_loss(z[:n], z[n:], self.temperature)}


class BYOLTask(SSLTask):
    """BYOL: the online predictor regresses the EMA target's projection of the other view."""

    def __init__(self, model: nn.Module, config: PretrainConfig, embed_dim: int) -> None:
        projector = MLPHead(embed_dim, config.hidden_dim, config.projection_dim)
        predictor = MLPHead(config.projection_dim, config.hidden_dim, config.projection_dim)
        # copies made before any tap exists on `model`, so the target carries no hook of ours
        target_model, target_projector = copy.deepcopy(model), copy.deepcopy(projector)
        super().__init__(
            model, config.layer, {"projector": projector, "predictor": predictor},
            {"target_model": target_model, "target_projector": target_projector},
            views=build_views(config.views),
        )
        self.projector, self.predictor = projector, predictor
        self.target_model, self.target_projector = target_model, target_projector
        self.target_tap = self.add_tap(target_model, config.layer, detach=True)
        self.ema_momentum, self.ema_schedule = config.ema_momentum, config.ema_schedule

    @classmethod
    def build(cls, model: nn.Module, config: PretrainConfig, sample: torch.Tensor) -> BYOLTask:
        return cls(model, config, _width(observe(model, config.layer, sample)[0]))

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        # the target normalises with batch statistics as the online network does (BYOL's setup);
        # its own forward passes update its running statistics, and the EMA callback then blends
        # them with the online network's (m * target + (1 - m) * online), as BYOL's reference code does
        self.target_model.train(mode)
        self.target_projector.train(mode)

    def callbacks(self) -> list[Callback]:
        return [EMATarget(
            [(self.model, self.target_model), (self.projector, self.target_projector)],
            self.ema_momentum, self.ema_schedule,
        )]

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        x = batch["input"]
        n = x.shape[0]
        views = self.view(torch.cat([x, x]))  # two independent random views per image
        p = self.predictor(self.projector(self.embed(views)))
        with torch.no_grad():
            self.target_model(views)
            z = self.target_projector(self.target_tap[self.layer].flatten(1))
        loss = byol_loss(p[:n], z[n:]) + byol_loss(p[n:], z[:n])
        return {"loss": loss}


class MAETask(SSLTask):
    """Masked / denoising autoencoder: embed an image with hidden patches, decode all pixels,
    score the hidden ones. The target is the (view-augmented) image itself."""

    def __init__(self, model: nn.Module, config: PretrainConfig, embed_dim: int, image_shape: tuple[int, ...]) -> None:
        if len(image_shape) != 3:
            raise ConfigError(f"pretrain(method='mae') needs image inputs (C, H, W), got per-sample shape {image_shape}")
        decoder = PixelDecoder(embed_dim, image_shape, config.hidden_dim)
        super().__init__(model, config.layer, {"decoder": decoder}, views=build_views(config.views))
        self.decoder = decoder
        self.mask_ratio, self.mask_patch = config.mask_ratio, config.mask_patch

    @classmethod
    def build(cls, model: nn.Module, config: PretrainConfig, sample: torch.Tensor) -> MAETask:
        return cls(model, config, _width(observe(model, config.layer, sample)[0]), tuple(sample.shape[1:]))

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        x = self.view(batch["input"])
        b, _, h, w = x.shape
        mask = random_patch_mask(b, h, w, patch=self.mask_patch, ratio=self.mask_ratio).to(x.device, x.dtype)
        background = x.amin(dim=(1, 2, 3), keepdim=True)
        corrupted = x * (1 - mask) + background * mask
        prediction = self.decoder(self.embed(corrupted))
        return {"loss": masked_reconstruction_loss(prediction, x, mask)}


class SSLDistillTask(SSLTask):
    """A frozen teacher's embedding taught to the student without labels (embedding + SEED)."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module, config: SSLDistillConfig,
        student_shape: torch.Size, teacher_shape: torch.Size,
    ) -> None:
        adapter = make_projector(student_shape, teacher_shape)
        modules: dict[str, nn.Module] = {"adapter": adapter}
        self.seed: SEEDLoss | None = None
        if config.seed_weight > 0:
            self.seed = SEEDLoss(_width(teacher_shape), config.queue_size,
                                 config.student_temperature, config.teacher_temperature)
            modules["seed"] = self.seed  # its queue buffer is checkpointed with the task
        super().__init__(student, config.student_layer, modules, {"teacher": teacher}, views=build_views(config.views))
        self.teacher, self.adapter, self.config = teacher, adapter, config
        self.teacher_tap = self.add_tap(teacher, config.teacher_layer, detach=True)

    @classmethod
    def build(cls, student: nn.Module, teacher: nn.Module, config: SSLDistillConfig, sample: torch.Tensor) -> SSLDistillTask:
        s_shape = observe(student, config.student_layer, sample)[0]
        t_shape = observe(teacher, config.teacher_layer, sample)[0]
        return cls(student, teacher, config, s_shape, t_shape)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        x = self.view(batch["input"])
        with torch.no_grad():
            self.teacher(x)
            t = self.teacher_tap[self.config.teacher_layer].flatten(1)
        self.model(x)
        s = self.adapter(self.tap[self.layer]).flatten(1)
        out: dict[str, Any] = {}
        loss = torch.zeros((), device=x.device)
        if self.config.embed_weight > 0:
            out["embed"] = embedding_loss(s, t, self.config.embed)
            loss = loss + self.config.embed_weight * out["embed"]
        if self.seed is not None:
            out["seed"] = self.seed(s, t)
            loss = loss + self.config.seed_weight * out["seed"]
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}}


METHODS: Registry[type[SSLTask]] = Registry("self-supervised method")
METHODS.register("simclr", SimCLRTask, help="SimCLR: NT-Xent contrast between two views (Chen et al. 2020)")
METHODS.register("byol", BYOLTask, help="BYOL: predict an EMA target's projection, no negatives (Grill et al. 2020)")
METHODS.register("mae", MAETask, help="masked / denoising autoencoder on image patches (He et al. 2022)")
