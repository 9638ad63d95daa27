"""`fit()`: the one training loop of condense.

Supervised training, fine-tuning after pruning, distillation, self-supervised pretraining and QAT
all run through this function; what differs is the Task (what a step computes) and the callbacks
(schedules). The loop owns the data order (`condense.data.loader`: any ArrayDataset, torch
Dataset or DataLoader), the device, bf16 autocast on CUDA, pinned memory and `torch.compile`,
data parallelism under `torchrun` (DDP around the task's trained modules only; one process is the
plain run), the optimizer and LR schedule, gradient clipping, validation and best-weight
selection (on validation data only), progress output, the metrics log, atomic per-epoch
checkpoints (rank 0), exact resume, and the non-finite-loss guard. Progress output and the
divergence warning live in `condense.train.progress` (re-exported here).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, NonFiniteLossError, RunError
from condense.core.io import append_jsonl, atomic_write_text
from condense.core.jsonio import dumps_strict, strict_data
from condense.data.loader import as_source
from condense.evaluate.metrics import evaluate
from condense.models.signature import batch_to
from condense.train import distributed as dist
from condense.train.callbacks import Callback, FitState
from condense.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from condense.train.config import TrainConfig
from condense.train.length import length_warnings, run_length, warn_length
from condense.train.optim import build_optimizer, build_scheduler
from condense.train.progress import DivergenceWarning, Progress, warn_if_diverged
from condense.train.signals import STOP, Interrupted
from condense.train.supervised import SupervisedTask
from condense.train.task import Task, trained_modules

__all__ = ["DivergenceWarning", "FitResult", "Validator", "choose_device", "default_validator", "fit",
           "train_model", "warn_if_diverged"]

Validator = Callable[[nn.Module, Any, torch.device], dict[str, float]]


@dataclasses.dataclass
class FitResult:
    """What happened in a `fit()` run. `model` holds the selected (best or last) weights."""

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int | None
    best_metric: float | None
    epochs_run: int
    steps: int
    resumed_from_epoch: int = 0
    skipped_nonfinite_steps: int = 0
    #: what the caller chose for the user and reports with the run (e.g. distillation's default
    #: losses by output kind, under "distill_defaults"); merged into `to_dict()`
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.info,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "epochs_run": self.epochs_run,
            "steps": self.steps,
            "resumed_from_epoch": self.resumed_from_epoch,
            "skipped_nonfinite_steps": self.skipped_nonfinite_steps,
        }


def choose_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def default_validator(model: nn.Module, data: Any, device: torch.device) -> dict[str, float]:
    """Classification loss and accuracy of `model` on labelled `data`."""
    m = evaluate(model, data, device=device, topk=(1,))
    return {"loss": float(m["loss"]), "accuracy": float(m["accuracy"])}


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return batch_to(batch, device, non_blocking=True)


class _StepModule(nn.Module):
    """The task's trained modules (student + adapters, no teacher) as one module whose forward is
    `task.step(batch)`, so DistributedDataParallel sees every trained parameter and the step."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.trained = nn.ModuleDict(
            {k: m for k, m in trained_modules(task).items() if any(p.requires_grad for p in m.parameters())}
        )
        self._task = [task]  # a list, so the task's teachers are not registered as submodules

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return self._task[0].step(batch)


def _mean_over_ranks(sums: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Per-rank sums of the logged step values, averaged over ranks (identical keys on every rank)."""
    if not dist.initialized() or not sums:
        return sums
    keys = sorted(sums)
    t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64).detach().to(device) for k in keys])
    dist.run_collective(torch.distributed.all_reduce, t)
    return dict(zip(keys, (t / dist.world().size).cpu().unbind(), strict=True))


def _all_finite(modules: dict[str, nn.Module]) -> bool:
    return all(bool(torch.isfinite(t).all()) for m in modules.values() for t in m.state_dict().values() if t.is_floating_point())


def fit(
    task: Task,
    train_data: Any,
    config: TrainConfig,
    val_data: Any | None = None,
    callbacks: Sequence[Callback] = (),
    *,
    resume: bool = False,
    validator: Validator | None = None,
) -> FitResult:
    """Train `task` on `train_data` as `config` says; return the selected model and the history.

    `train_data` / `val_data`: an ArrayDataset, a map-style torch Dataset, a DataLoader or a
    tensor (see `condense.data.loader`). With `config.checkpoint_dir`, an atomic checkpoint is
    written at each epoch end; `resume=True` continues from it (same seed and config ->
    bit-identical weights on CPU to an uninterrupted run, also with `num_workers > 0`).
    `validator(model, val_data, device)` returns metrics (default: classification loss and
    accuracy); the task may provide its own as `task.validate`. Best weights are selected on
    validation data only. Under `torchrun` (WORLD_SIZE > 1) the run is data-parallel:
    `config.batch_size` is the global batch, split evenly over the processes.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"fit() needs a TrainConfig, got {type(config).__name__}")
    source = as_source(train_data)
    if len(source) == 0:
        raise ConfigError("fit(): the training data is empty")
    if resume and not config.checkpoint_dir:
        raise ConfigError("resume needs TrainConfig.checkpoint_dir")
    if config.threads:
        torch.set_num_threads(config.threads)
    w = dist.world()
    device = choose_device(config.device)
    if w.distributed:
        w = dist.ensure_initialized(device.type)
        device = dist.device_for(device, w)
    main = w.main
    rank_batch = dist.per_rank_batch(config.batch_size, w) if w.distributed else config.batch_size
    use_amp = device.type == "cuda" and config.amp in ("auto", "bf16")
    pin = config.pin_memory if config.pin_memory is not None else device.type == "cuda"
    validator = validator or getattr(task, "validate", None) or default_validator
    has_val = val_data is not None and len(as_source(val_data)) > 0
    select = config.select_best if has_val else "last"
    if select == "val_accuracy" and getattr(task, "selects_by_loss", False):
        select = "val_loss"  # the task's outputs have no accuracy (an encoder distilled to its teacher)

    torch.manual_seed(config.seed)
    for m in task.modules().values():
        m.to(device)
    length = run_length(config, len(source), rank_batch, w.size)
    steps_per_epoch, total_steps, epochs, drop_last = length.steps_per_epoch, length.total_steps, length.epochs, length.drop_last
    if steps_per_epoch < 1:
        raise ConfigError(f"fit(): {len(source)} samples make no batch of {rank_batch} per process")
    length_notes = warn_length(config, length) if main else length_warnings(config, length)
    optimizer = build_optimizer(task.trainable_parameters(), config)
    scheduler = build_scheduler(optimizer, config, total_steps, steps_per_epoch)
    state = FitState(task, config, optimizer, device, total_steps=total_steps, steps_per_epoch=steps_per_epoch)

    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    log_path = Path(config.log_file) if config.log_file else (ckpt_dir / "metrics.jsonl" if ckpt_dir else None)
    if not main:
        log_path = None
    history: list[dict[str, Any]] = []
    best_metric: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 0
    skipped_total = 0
    skip_batches = 0  # batches of `start_epoch` already done (a mid-epoch checkpoint)
    partial: dict[str, Any] = {}
    if resume and ckpt_dir is not None and (ckpt_dir / CHECKPOINT_NAME).exists():
        ck = load_checkpoint(ckpt_dir / CHECKPOINT_NAME, task, optimizer, scheduler, callbacks, config, device)
        start_epoch, state.step = ck["epoch"], ck["step"]
        history, best_metric, best_epoch = ck["history"], ck["best_metric"], ck["best_epoch"]
        best_state, skipped_total = ck["best_state"], ck["skipped_nonfinite_steps"]
        skip_batches, partial = ck.get("batch_in_epoch", 0), ck.get("partial") or {}
    dist.barrier()  # every rank has read the checkpoint before rank 0 may write the next one

    def checkpoint(epoch_done: int, batch_in_epoch: int = 0, sums: dict[str, Any] | None = None, counted: int = 0) -> None:
        if not main:
            return
        trained = trained_modules(task)
        if not _all_finite(trained):
            raise RunError(f"weights became non-finite at epoch {epoch_done + 1}; no checkpoint written to {ckpt_dir}")
        save_checkpoint(
            ckpt_dir / CHECKPOINT_NAME, task, optimizer, scheduler, callbacks, config,
            epoch=epoch_done, step=state.step, history=history, best_metric=best_metric,
            best_epoch=best_epoch, best_state=best_state, skipped_nonfinite_steps=skipped_total,
            batch_in_epoch=batch_in_epoch, partial={"sums": sums or {}, "counted": counted},
        )

    if log_path is not None:
        atomic_write_text(log_path, "".join(dumps_strict(h, what=str(log_path)) + "\n" for h in history))
    eval_model = task.eval_model()
    if config.compile:
        eval_model.compile()  # in place: parameter names and state_dict keys are unchanged
    step_fn: Callable[[dict[str, torch.Tensor]], dict[str, Any]] = task.step
    if w.distributed:
        find_unused = config.find_unused_parameters or bool(getattr(task, "ddp_find_unused_parameters", False))
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # buffers (BatchNorm statistics) are synced from rank 0 at init and before each forward (the default)
        step_fn = DistributedDataParallel(_StepModule(task), device_ids=ids, find_unused_parameters=find_unused)
    progress = Progress(config.progress if main else "off", total_steps)
    progress.advance(state.step)
    for cb in callbacks:
        cb.on_fit_begin(state)
    consecutive_bad = 0
    try:
        for epoch in range(start_epoch, epochs):
            if state.step >= total_steps or state.stop:
                break
            state.epoch = epoch
            task.train(True)
            for cb in callbacks:
                cb.on_epoch_begin(state)
            t0 = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            counted = 0
            skip = skip_batches if epoch == start_epoch else 0
            if skip:
                sums, counted = dict(partial.get("sums", {})), int(partial.get("counted", 0))
            batches = source.batches(rank_batch, shuffle=True, seed=config.seed, epoch=epoch, drop_last=drop_last,
                                     start=skip, rank=w.rank, world=w.size, num_workers=config.num_workers,
                                     pin_memory=pin)
            for i_batch, batch in enumerate(batches, start=skip):
                if state.step >= total_steps or state.stop:
                    break
                batch = _to_device(batch, device)
                for cb in callbacks:
                    cb.on_step_begin(state)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = step_fn(batch)
                loss = out["loss"]
                bad = not bool(torch.isfinite(loss))
                stop_now = False
                if w.distributed:  # every rank takes the same branch, or DDP would wait forever
                    bad, stop_now = dist.any_flags(bad, STOP.requested, device=device)
                if bad:
                    consecutive_bad += 1
                    skipped_total += 1
                    optimizer.zero_grad(set_to_none=True)
                    if consecutive_bad >= config.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"training loss was non-finite ({float(loss.detach())}) for {consecutive_bad} steps in a row "
                            f"(epoch {epoch}, step {state.step}); lower the learning rate or check the data "
                            f"(TrainConfig.max_nonfinite_steps={config.max_nonfinite_steps})"
                        )
                    continue
                consecutive_bad = 0
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for cb in callbacks:
                    cb.on_after_backward(state)
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(task.trainable_parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                state.step += 1
                state.last_output = out
                for k, v in out.items():
                    if isinstance(v, torch.Tensor) and v.numel() == 1:
                        sums[k] = sums.get(k, 0) + v.detach().float()
                    elif isinstance(v, (int, float)):
                        sums[k] = sums.get(k, 0) + torch.tensor(float(v))
                counted += 1
                progress.advance(1)
                for cb in callbacks:
                    cb.on_step_end(state)
                if stop_now or (not w.distributed and STOP.requested):
                    where = "no checkpoint (no checkpoint_dir)"
                    if ckpt_dir is not None:
                        checkpoint(epoch, i_batch + 1, sums, counted)
                        where = f"checkpoint {ckpt_dir / CHECKPOINT_NAME}"
                    dist.barrier()  # rank 0's checkpoint is on disk before any process exits
                    signum = STOP.signum or 15
                    name = "SIGINT" if signum == 2 else "SIGTERM" if signum == 15 else f"signal {signum}"
                    raise Interrupted(signum, f"stopped on {name} at epoch {epoch + 1}, step {state.step}; {where}")
            sums = _mean_over_ranks(sums, device)
            record: dict[str, Any] = {"epoch": epoch + 1, "step": state.step}
            record.update({f"train_{k}": float(v) / max(counted, 1) for k, v in sums.items()})
            record["lr"] = float(optimizer.param_groups[0]["lr"])
            record["epoch_time_s"] = time.perf_counter() - t0
            if has_val:
                val_metrics = None
                if main:
                    task.train(False)
                    val_metrics = {k: float(v) for k, v in validator(eval_model, val_data, device).items()}
                    task.train(True)
                for k, v in dist.broadcast_object(val_metrics).items():
                    record[f"val_{k}"] = v
            state.epoch_metrics = record
            for cb in callbacks:
                cb.on_epoch_end(state)
            if select != "last":
                key = "val_accuracy" if select == "val_accuracy" else "val_loss"
                if key not in record:
                    raise ConfigError(f"select_best={select!r} but the validator returned no {key[4:]!r}")
                value = record[key]
                if key == "val_accuracy":
                    # A small validation set saturates: break accuracy ties by the lower validation
                    # loss, else the first epoch to reach the plateau (often under-trained) would win.
                    loss = record.get("val_loss", math.inf)
                    best_loss = history[best_epoch - 1].get("val_loss", math.inf) if best_epoch else math.inf
                    better = best_metric is None or value > best_metric or (value == best_metric and loss < best_loss)
                else:
                    better = best_metric is None or value < best_metric
                if better:
                    best_metric, best_epoch = value, epoch + 1
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in eval_model.state_dict().items()}
            history.append(record)
            if log_path is not None:
                append_jsonl(log_path, strict_data(record, what=str(log_path)))  # NaN -> null (warned)
            progress.epoch(record)
            if ckpt_dir is not None:
                checkpoint(epoch + 1)
    except RuntimeError as e:  # a collective inside DDP's backward / a barrier failed: a peer is gone
        if w.distributed and dist.is_peer_failure(e):
            raise dist.PeerError(e) from e
        raise
    finally:
        progress.close()
        if config.compile:
            eval_model._compiled_call_impl = None  # hand back a plain module (export, save, deepcopy)
    for cb in callbacks:
        cb.on_fit_end(state)
    warn_if_diverged(history)
    task.train(False)
    if select != "last" and best_state is not None:
        eval_model.load_state_dict(best_state)
    dist.broadcast_module(eval_model)  # rank 0's selected weights and buffers everywhere
    return FitResult(
        model=eval_model,
        history=history,
        best_epoch=best_epoch,
        best_metric=best_metric,
        epochs_run=len(history),
        steps=state.step,
        resumed_from_epoch=start_epoch,
        skipped_nonfinite_steps=skipped_total,
        info={"length": {**length.to_dict(), "warnings": length_notes}},
    )


def train_model(
    model: nn.Module,
    train_data: Any,
    config: TrainConfig,
    val_data: Any | None = None,
    callbacks: Sequence[Callback] = (),
    *,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    resume: bool = False,
) -> FitResult:
    """Supervised training of `model` through `fit()` (the `condense train` verb)."""
    task = SupervisedTask(model, label_smoothing=config.label_smoothing, augment=augment)
    return fit(task, train_data, config, val_data, callbacks, resume=resume)
