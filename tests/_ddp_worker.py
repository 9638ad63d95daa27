"""A training run the distributed tests start under `torchrun` (and, for reference, in-process).

    torchrun --standalone --nproc_per_node=2 tests/_ddp_worker.py OUT [--kill-at-epoch K] [--die-at-step S]
        [--resume] [--epochs E] [--batch-size B] [--workers W]

Trains a dropout-free, BatchNorm-free MLP on a seeded synthetic *torch Dataset* (not an
ArrayDataset, so the DataLoader path with workers is exercised) and, on rank 0, writes the final
weights to OUT/weights.safetensors. `--kill-at-epoch` SIGKILLs rank 0 at the end of that epoch
(after the epoch's checkpoint of the previous epoch is on disk, before this one's), like a crash;
`--die-at-step` makes rank 1 exit abruptly at that optimizer step.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from condense.train import TrainConfig
from condense.train.callbacks import Callback
from condense.train.fit import train_model

N_SAMPLES, N_FEATURES, N_CLASSES = 192, 12, 3


class Blobs(Dataset):
    """Seeded Gaussian blobs as (features, label) tuples: a user's own map-style Dataset."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.y = torch.randint(0, N_CLASSES, (N_SAMPLES,), generator=g)
        centres = torch.randn(N_CLASSES, N_FEATURES, generator=g) * 2
        self.x = centres[self.y] + torch.randn(N_SAMPLES, N_FEATURES, generator=g)

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def build_model() -> torch.nn.Module:
    import condense

    torch.manual_seed(0)
    return condense.build_model("mlp", in_features=N_FEATURES, num_classes=N_CLASSES, hidden=[32])


def config(out: Path, epochs: int, batch_size: int, workers: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-2, seed=7, num_workers=workers, progress="off",
                       checkpoint_dir=str(out / "checkpoint"), select_best="last", drop_last=True, threads=1)


class _Crash(Callback):
    def __init__(self, kill_at_epoch: int | None, die_at_step: int | None) -> None:
        self.kill_at_epoch, self.die_at_step = kill_at_epoch, die_at_step

    def on_step_end(self, state) -> None:
        if self.die_at_step is not None and state.step == self.die_at_step and os.environ.get("RANK") == "1":
            os._exit(3)  # an abrupt death: no exception, no cleanup

    def on_epoch_end(self, state) -> None:
        if self.kill_at_epoch is not None and state.epoch + 1 == self.kill_at_epoch and os.environ.get("RANK") == "0":
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--kill-at-epoch", type=int, default=None)
    p.add_argument("--die-at-step", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    cfg = config(out, args.epochs, args.batch_size, args.workers)
    result = train_model(build_model(), Blobs(), cfg, callbacks=[_Crash(args.kill_at_epoch, args.die_at_step)],
                         resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(out / "weights.safetensors"))
    from condense.train import distributed

    distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
