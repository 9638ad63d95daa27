"""The distillation task: frozen teachers teach a student through the one `fit()` loop."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError
from condense.core.taps import FeatureTap
from condense.data.augment import build_augment
from condense.data.loader import as_source
from condense.distill.cache import TeacherCache
from condense.distill.config import DistillConfig
from condense.distill.defaults import is_encoder
from condense.distill.losses import CombinedLoss, LossInputs, average_teacher_probs
from condense.distill.losses.base import crop_tokens
from condense.evaluate.metrics import evaluate
from condense.export.onnx import output_tensor
from condense.models.signature import batch_to, call_model, slice_batch
from condense.train.fit import default_validator
from condense.train.task import TaskBase


def combine_teachers(
    logits: Sequence[torch.Tensor], mode: str, temperature: float, weights: Sequence[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix several teachers' soft targets; return (probabilities at T, per-sample weights (B, K)).

    "mean": equal weights; "weighted": fixed `weights` (normalised); "confidence": per sample,
    softmax over teachers of minus the entropy of each teacher's (T = 1) prediction, so a
    confident teacher counts more on the samples it is sure of. Weights sum to 1 per sample.
    """
    k, b = len(logits), logits[0].shape[0]
    if mode == "confidence":
        probs_t = torch.stack([F.softmax(t.float() / temperature, dim=-1) for t in logits], dim=1)  # (B, K, C)
        p1 = torch.stack([F.softmax(t.float(), dim=-1) for t in logits], dim=1)
        entropy = -(p1 * p1.clamp_min(1e-12).log()).sum(-1)  # (B, K)
        w = F.softmax(-entropy, dim=1)
        return (w.unsqueeze(-1) * probs_t).sum(1), w
    if mode == "weighted":
        if weights is None or len(weights) != k:
            raise ConfigError(f"teacher_weights must give one weight per teacher ({k}), got {weights!r}")
        fixed = torch.tensor([float(x) for x in weights])
    else:
        fixed = torch.ones(k)
    fixed = fixed / fixed.sum()
    probs = average_teacher_probs([t.float() for t in logits], temperature, fixed.tolist())
    return probs, fixed.to(probs.device).expand(b, k)


def _mix_temperature(losses: CombinedLoss, config: DistillConfig) -> float:
    """The temperature at which several teachers are mixed: the one the logit losses use.

    The mixture is consumed as soft targets at the losses' own temperature, so it must be made at
    that temperature (with explicit `losses` the config's `temperature` field is otherwise unused).
    """
    temps = {float(t.temperature) for t in losses.terms.values() if "logits" in t.needs and hasattr(t, "temperature")}
    if not config.losses or not temps:
        return config.temperature
    if len(temps) > 1:
        raise ConfigError(
            f"multi-teacher distillation mixes the teachers at one temperature, but the losses use {sorted(temps)}; "
            "give every logit loss the same temperature"
        )
    return temps.pop()


def _expects(term: nn.Module) -> str:
    """What a loss without its own `expects` reads, from its `needs`."""
    needs = getattr(term, "needs", frozenset())
    if "targets" in needs:
        return "logits (B, C) with class indices (B,), or (B, T, C) with (B, T)"
    if "logits" in needs and getattr(term, "compares_classes", True):
        return "student and teacher logits of the same shape, (B, C) or (B, T, C)"
    if "logits" in needs:
        return "student and teacher output vectors (B, ..., D)"
    return "the features it names"


def _shape_problem(term: nn.Module, inp: LossInputs) -> str | None:
    """A plain shape mismatch the loss would otherwise trip over mid-computation (or silently
    broadcast), in words; None when the shapes fit."""
    s, t, y = inp.student_logits, inp.teacher_logits, inp.targets
    needs = getattr(term, "needs", frozenset())
    if "targets" in needs and s is not None and y is not None and tuple(y.shape) != tuple(s.shape[:-1]):
        return f"the targets must be shaped like the output without its last dim, {tuple(s.shape[:-1])}"
    if ("logits" in needs and getattr(term, "compares_classes", True) and s is not None and t is not None
            and s.dim() != t.dim()):
        return "student and teacher outputs have different ranks"
    return None


class DistillTask(TaskBase):
    """Student + adapters are trained; teachers are frozen (eval mode, no grad, BN stats untouched).

    Teacher outputs come from a `TeacherCache` when one is given (fixed views), else from a live
    forward pass on the same (augmented / mixed-up) view the student sees.
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: Sequence[nn.Module],
        losses: CombinedLoss,
        config: DistillConfig,
        cache: TeacherCache | None = None,
    ) -> None:
        if not teachers:
            raise ConfigError("distillation needs at least one teacher; the teacher list is empty")
        if config.feature_teacher >= len(teachers):
            raise ConfigError(f"feature_teacher={config.feature_teacher} but only {len(teachers)} teacher(s) given")
        super().__init__(student, {"losses": losses}, {f"teacher{i}": t for i, t in enumerate(teachers)})
        self.teachers = list(teachers)
        self.losses = losses
        self.config = config
        self.cache = cache
        self.augment = build_augment(config.augment)
        self.needs = losses.needs
        losses.bind(student, self.teachers[config.feature_teacher])  # layer indices -> module names
        s_layers, t_layers = losses.feature_layers()
        self.student_layers, self.teacher_layers = s_layers, t_layers
        self.student_tap = FeatureTap(student, s_layers) if s_layers else None
        self.teacher_tap = None
        if t_layers and cache is None:
            self.teacher_tap = FeatureTap(self.teachers[config.feature_teacher], t_layers, detach=True)
        self._beta = torch.distributions.Beta(config.mixup, config.mixup) if config.mixup > 0 else None
        self.mix_temperature = _mix_temperature(losses, config) if len(self.teachers) > 1 else config.temperature
        #: what `build_task` picked when the config named no losses (output kind, losses, why)
        self.defaults: dict[str, Any] | None = None

    # -- validation ----------------------------------------------------------------------------
    @property
    def selects_by_loss(self) -> bool:
        """An encoder student has no accuracy: fit() keeps the epoch of the lowest validation loss."""
        picked = self.defaults["output_kind"] if self.defaults else None
        return is_encoder(self.model) or picked in ("embedding", "token_states", "token_logits")

    def validate(self, model: nn.Module, data: Any, device: torch.device) -> dict[str, float]:
        """Classifier students: loss and accuracy on labelled `data` (fit's default). Encoder
        students: how closely they follow the first teacher on `data`: `loss` = 1 - mean cosine,
        `mean_cosine`, `min_cosine`, `topk_overlap` (`evaluate(..., reference=teacher)`). Per-token
        outputs whose losses were picked by default (`defaults`): `_validate_tokens`."""
        picked = self.defaults["output_kind"] if self.defaults else None
        if picked in ("token_logits", "token_states"):
            return self._validate_tokens(model, data, device, picked)
        if not self.selects_by_loss:
            return default_validator(model, data, device)
        ref = evaluate(model, data, reference=self.teachers[0], device=device)["reference"]
        out = {"loss": 1.0 - float(ref["mean_cosine"]), "mean_cosine": float(ref["mean_cosine"]),
               "min_cosine": float(ref["min_cosine"])}
        if "topk_overlap" in ref:
            out["topk_overlap"] = float(ref["topk_overlap"])
        return out

    def _validate_tokens(self, model: nn.Module, data: Any, device: torch.device, kind: str) -> dict[str, float]:
        """Per-token outputs picked by default: how closely the student follows the first teacher on
        `data`, over the real tokens; labels are not read. Next-token logits: `loss` = mean
        KL(teacher || student) at T = 1 and `token_agreement` (how often the most likely next tokens
        agree); hidden states: `loss` = the `token_states` loss (through its projection, so the
        widths may differ)."""
        term = next(iter(self.losses.terms.values()))
        was = model.training
        model.eval()
        loss_sum, agree, count = 0.0, 0.0, 0.0
        with torch.no_grad():
            for batch in as_source(data).batches(self.config.train.batch_size):
                batch = batch_to(batch, device)
                s = output_tensor(call_model(model, batch)).float()
                t = output_tensor(call_model(self.teachers[0], batch)).float()
                mask = batch.get("attention_mask")
                m = torch.ones(s.shape[:2], device=s.device) if mask is None else (mask[:, :s.shape[1]] != 0).float()
                n = float(m.sum())
                if kind == "token_logits":
                    log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
                    loss_sum += float(((log_t.exp() * (log_t - log_s)).sum(-1) * m).sum())
                    agree += float(((s.argmax(-1) == t.argmax(-1)).float() * m).sum())
                else:
                    loss_sum += float(term(s, t, mask)) * n
                count += n
        model.train(was)
        count = max(count, 1.0)
        out = {"loss": loss_sum / count}
        if kind == "token_logits":
            out["token_agreement"] = agree / count
        return out

    # -- building the loss inputs -------------------------------------------------------------
    def _view(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch the student and (live) teachers see: `input` augmented / mixed up in training."""
        if not self.model.training or (self.augment is None and self._beta is None):
            return batch
        if "input" not in batch:
            raise ConfigError(f"augmentation / mixup transform the 'input' field, but the batches have {sorted(batch)}")
        x = batch["input"]
        if self.augment is not None:
            x = self.augment(x)
        if self._beta is not None:
            lam = self._beta.sample().to(x.device)
            perm = torch.randperm(x.shape[0]).to(x.device)
            x = lam * x + (1 - lam) * x[perm]
        return {**batch, "input": x}

    def _teacher_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        if self.cache is not None:
            if "index" not in batch:
                raise ConfigError("the teacher cache looks outputs up by sample id, but the batches carry no 'index' "
                                  "(a DataLoader with a shuffling sampler gives none); pass the Dataset itself, or cache: off")
            device = next(iter(v.device for v in batch.values() if isinstance(v, torch.Tensor)))
            got = {k: v.to(device, non_blocking=True) for k, v in self.cache.lookup(batch["index"]).items()}
            logits = [got[f"logits/{i}"] for i in range(len(self.teachers))]
            prefix = f"feat/{self.config.feature_teacher}/"
            feats = {k[len(prefix):]: v for k, v in got.items() if k.startswith(prefix)}
            return logits, feats
        need_logits = "logits" in self.needs or len(self.teachers) > 1
        need_feats = bool(self.teacher_layers)
        logits: list[torch.Tensor] = []
        feats: dict[str, torch.Tensor] = {}
        if not (need_logits or need_feats):
            return logits, feats
        with torch.no_grad():
            for i, t in enumerate(self.teachers):
                if need_logits or i == self.config.feature_teacher:
                    logits.append(output_tensor(call_model(t, batch)).detach())
        if self.teacher_tap is not None:
            feats = dict(self.teacher_tap.features)
        return logits, feats

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> LossInputs:
        batch = self._view(batch)
        t_logits, t_feats = self._teacher_outputs(batch)
        s_logits = output_tensor(call_model(self.model, batch))
        s_feats = dict(self.student_tap.features) if self.student_tap is not None else {}
        if self.cache is not None and s_logits.dim() >= 3 and "attention_mask" in batch:
            # per-token outputs: the cache zero-pads them to the longest sample it saw
            t_logits = [crop_tokens(t, s_logits.shape[1]) for t in t_logits]
        inp = LossInputs(student_logits=s_logits, targets=batch.get("target"), student_features=s_feats,
                         teacher_features=t_feats, index=batch.get("index"), mask=batch.get("attention_mask"))
        if len(t_logits) == 1:
            inp.teacher_logits = t_logits[0]
        elif len(t_logits) > 1:
            probs, _ = combine_teachers(t_logits, self.config.teacher_mix, self.mix_temperature, self.config.teacher_weights)
            inp.teacher_probs = probs
            # logits whose softmax at T equals the mixture, for losses that read logits (e.g. DKD)
            inp.teacher_logits = self.mix_temperature * probs.clamp_min(1e-12).log()
        if "targets" in self.needs and inp.targets is None:
            raise ConfigError("the distillation losses use ground-truth labels (ce / dkd), but the data is unlabelled; "
                              "use alpha: 1 (label-free) or label-free losses")
        return inp

    def check_shapes(self, batch: dict[str, torch.Tensor]) -> None:
        """Fail early (with names) when teachers and student disagree on the number of classes."""
        names = [k for k, t in self.losses.terms.items() if "logits" in t.needs and t.compares_classes]
        if not names:
            return  # feature / embedding losses only: the output widths may differ
        x = slice_batch(batch, 2)
        was = self.model.training
        self.model.eval()  # no BatchNorm statistics are touched by this check
        with torch.no_grad():
            s = output_tensor(call_model(self.model, x))
            for i, t in enumerate(self.teachers):
                out = output_tensor(call_model(t, x))
                if out.shape[-1] != s.shape[-1]:
                    raise ConfigError(
                        f"teacher {i} predicts {out.shape[-1]} classes but the student predicts {s.shape[-1]} "
                        f"(teacher output {tuple(out.shape)}, student output {tuple(s.shape)}); the loss(es) "
                        f"{', '.join(repr(n) for n in names)} compare the two outputs class by class and need the "
                        "same classes (for hidden states pick a feature loss: token_states, embedding)"
                    )
        self.model.train(was)

    def materialize(self, batch: dict[str, torch.Tensor]) -> None:
        """Create lazily-shaped adapters from one batch (before the optimizer is built), then run
        every loss once on it (`check_losses`): a loss whose inputs do not fit fails here, before
        any optimizer step, with both shapes."""
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                inp = self.loss_inputs(batch)
                self.losses.materialize(inp)
                self.check_losses(inp)
        finally:
            self.model.train(was)

    def check_losses(self, inp: LossInputs) -> None:
        """Every loss on one batch's inputs; a shape that does not fit is a ConfigError naming the
        loss, the student's and teacher's outputs (and the targets) and what the loss expects.
        The losses' state (CRD's memory) and the random number streams are left as they were."""
        shapes = {"student output": inp.student_logits, "teacher output": inp.teacher_logits, "target": inp.targets}
        have = ", ".join(f"{k} {tuple(v.shape)}" for k, v in shapes.items() if v is not None)
        state = {k: v.clone() for k, v in self.losses.state_dict().items()}
        devices = [inp.student_logits.device] if inp.student_logits is not None and inp.student_logits.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            for key, term in self.losses.terms.items():
                expects = term.expects or _expects(term)
                problem = _shape_problem(term, inp)
                if problem is None:
                    try:
                        term.forward_inputs(inp)
                    except (ConfigError, RuntimeError, ValueError, IndexError) as e:
                        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if problem is not None:
                    self.losses.load_state_dict(state, strict=False)
                    raise ConfigError(f"distillation loss {key!r} does not fit this model and data: {have}; it "
                                      f"expects {expects} ({problem}). Pick losses for this output "
                                      "(docs/distillation.md, 'Defaults by output kind') or fix the data")
        self.losses.load_state_dict(state, strict=False)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        total, logs = self.losses(self.loss_inputs(batch))
        return {"loss": total, **logs}

    def close(self) -> None:
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()
