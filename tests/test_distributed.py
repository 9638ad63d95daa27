"""Data-parallel training under torchrun: 2 CPU processes with gloo, against one process.

Each torchrun launch costs a few seconds (two Python processes import torch); the launches here
are the ones the promises need: equal weights to a single-process run with the same global batch,
exact resume after a SIGKILL, a clean stop when a peer dies, and the CLI writing once.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from condense.core.errors import ConfigError
from condense.train.distributed import World, per_rank_batch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_ddp_worker.py"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def _worker_module():
    spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torchrun(*args: str, timeout: int = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    environ.update({"OMP_NUM_THREADS": "1", "CONDENSE_DIST_TIMEOUT_S": "60", "PYTHONUNBUFFERED": "1", **(env or {})})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    res = torchrun(str(WORKER), str(out), "--epochs", "3", "--workers", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_two_processes_give_the_weights_of_one_process_with_the_same_global_batch(two_process_run, tmp_path):
    w = _worker_module()
    threads = torch.get_num_threads()
    try:
        result = w.train_model(w.build_model(), w.Blobs(), w.config(tmp_path, epochs=3, batch_size=16, workers=0))
    finally:
        torch.set_num_threads(threads)
    single = result.model.state_dict()
    ddp = _weights(two_process_run)
    assert set(single) == set(ddp)
    assert result.steps == 3 * (w.N_SAMPLES // 16)
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=2e-5, rtol=1e-4, msg=f"{k} differs from one process")
    # only rank 0 wrote: one checkpoint, one metrics log with one line per epoch
    ck = two_process_run / "checkpoint"
    assert sorted(p.name for p in ck.iterdir()) == ["last.ckpt", "metrics.jsonl"]
    assert len((ck / "metrics.jsonl").read_text().splitlines()) == 3


def test_killed_two_process_run_resumes_to_the_same_weights(two_process_run, tmp_path):
    killed = torchrun(str(WORKER), str(tmp_path), "--epochs", "3", "--workers", "1", "--kill-at-epoch", "2")
    assert killed.returncode != 0
    assert not (tmp_path / "weights.safetensors").exists()
    ckpt = torch.load(tmp_path / "checkpoint" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1  # the checkpoint of the epoch before the kill
    resumed = torchrun(str(WORKER), str(tmp_path), "--epochs", "3", "--workers", "1", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    got, want = _weights(tmp_path), _weights(two_process_run)
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k}: resumed run differs from the uninterrupted one"


DYING_MODEL = """
import os
from torch import nn

class Dying(nn.Module):
    '''A digits classifier whose forward kills rank 1 abruptly at its 5th training call.'''

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.training and self.calls == 5 and os.environ.get("RANK") == "1":
            os._exit(3)
        return self.net(x)

def make(**kwargs):
    return Dying()
"""


def test_a_rank_that_dies_stops_the_others_with_a_clear_error_and_no_artifact(tmp_path):
    (tmp_path / "dying_model.py").write_text(DYING_MODEL)
    out = tmp_path / "run"
    res = torchrun("-m", "condense", "train", "--model", "dying_model:make", "--data", "digits", "--epochs", "2",
                   "--out", str(out), env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode != 0
    assert "another torchrun process stopped or failed" in res.stderr, res.stderr[-3000:]
    assert not (out / "condense.json").exists() and not (out / "model.safetensors").exists()
    leftovers = [p.name for p in (out / "checkpoint").iterdir()] if (out / "checkpoint").exists() else []
    assert all(name in ("last.ckpt", "metrics.jsonl") for name in leftovers), leftovers  # nothing partial


def test_global_batch_must_divide_by_the_number_of_processes():
    assert per_rank_batch(16, World(0, 2, 0)) == 8
    with pytest.raises(ConfigError, match=r"batch_size=15 is the global batch.*2.*use e\.g\. 14"):
        per_rank_batch(15, World(1, 2, 1))


def test_cli_train_under_torchrun_writes_one_artifact(tmp_path):
    out = tmp_path / "teacher"
    res = torchrun("-m", "condense", "train", "--model", "mlp", "--data", "digits", "--epochs", "2",
                   "--batch-size", "64", "--out", str(out), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count('"artifact"') == 1  # rank 0 speaks for the run
    import condense

    model = condense.load(out)
    splits = condense.load_dataset("digits")
    assert condense.evaluate(model, splits.test)["accuracy"] > 0.8
    bad = torchrun("-m", "condense", "train", "--model", "mlp", "--data", "digits", "--epochs", "1",
                   "--batch-size", "15", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0
    assert "must be divisible by the number of processes (2" in bad.stderr
    assert not (tmp_path / "bad" / "condense.json").exists()


RECIPE = """
version: 1
name: ddp-recipe
data: {name: digits}
measure: {batch_sizes: [1], repeats: 3, runtimes: [onnxruntime]}
stages:
  - {name: teacher, kind: train, model: {name: mlp, kwargs: {hidden: [32]}}, train: {epochs: 4, lr: 0.01, batch_size: 64}}
  - {name: int8, kind: quantize, from: teacher, config: {method: static}}
"""


def test_recipe_run_under_torchrun_trains_on_every_rank_and_writes_once(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    res = torchrun("-m", "condense", "run", str(recipe), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("run folder:") == 1 and res.stderr.count("stage 1/2 teacher") == 1
    import json

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["teacher", "int8"]
    assert report["stages"][0]["accuracy"] > 0.5 and (tmp_path / "run" / "02-int8" / "model.int8.onnx").is_file()
    assert not (tmp_path / "run" / ".condense.lock").exists()  # rank 0 alone took the folder lock, and released it


def test_a_locked_run_folder_stops_every_rank_naming_the_holder(tmp_path):
    """Under torchrun rank 0 alone takes the run folder's lock; when another process holds it,
    every rank stops (no rank waits for a peer that gave up) and nothing is written."""
    from condense.core.io import folder_lock
    from condense.recipes.runner import RESOLVED

    run = tmp_path / "run"
    run.mkdir()
    (run / RESOLVED).write_text(RECIPE)
    with folder_lock(run):
        res = torchrun("-m", "condense", "resume", str(run), timeout=120)
    assert res.returncode != 0
    assert f"process {os.getpid()} is running in this folder" in res.stderr, res.stderr[-3000:]
    assert "rank 1: rank 0 failed" in res.stderr, res.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [RESOLVED]
