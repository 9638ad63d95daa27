"""Run a recipe into a run folder, stage by stage, resumably.

    run/
      recipe.yaml          the resolved recipe (what `resume` re-reads)
      01-teacher/          model.safetensors, condense.json, model.onnx, metrics.json,
                           checkpoint/ (training stages), DONE (written last)
      02-student/ ...
      report.json          every stage's measured row, in order
      DONE                 the whole run finished

A stage folder without DONE is unfinished: `resume` runs it again, continuing its training from
the last checkpoint (epoch end, or the step where SIGINT / SIGTERM stopped it). Each stage's
input models are always read back from the earlier stages' artifacts on disk, so a resumed run
and an uninterrupted one compute exactly the same thing.

Under `torchrun` every process runs the training stages (data-parallel, `fit()`); rank 0 alone
runs the other stages, measures, and writes every file, while the others wait for it
(`distributed.on_main`), then read the artifacts back like a resumed run does. The run folder
must therefore be on storage every process sees (one machine, or a shared filesystem).

One process at a time: `run` and `resume` hold the run folder's lock (`core.io.folder_lock`,
`.condense.lock`, rank 0 only under torchrun) from start to end; a second one is refused with
`FolderBusyError` (exit 4) naming the holder's PID. Every file the runner writes resolves inside
the run folder, and a run folder holding a symlink that leads out of it is refused
(`OutsideFolderError`, exit 3) before anything is written (docs/security.md).
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from condense.artifacts import load
from condense.core.errors import ConfigError, InputFileError
from condense.core.io import (
    LOCK_NAME,
    atomic_write_json,
    atomic_write_text,
    check_tree_inside,
    folder_lock,
    inside,
    read_json,
)
from condense.core.seed import seed_everything
from condense.data import load_dataset
from condense.data.loader import example_inputs
from condense.evaluate.timing import onnx_latency_pass
from condense.recipes.measure import MeasureConfig, measure_model
from condense.recipes.schema import Recipe, check_stage_name, load_recipe
from condense.recipes.stages import STAGES, StageContext
from condense.recipes.stages import run_stage as run_kind
from condense.recipes.validate import validate_recipe
from condense.report import write_report
from condense.train import distributed as dist
from condense.train.signals import stop_on_signals
from condense.version import __version__

RESOLVED = "recipe.yaml"
DONE = "DONE"


def stage_dir(run: Path, i: int, name: str) -> Path:
    check_stage_name(name)  # load_recipe checked it with file:line; this guards Recipe objects built in code
    return run / f"{i + 1:02d}-{name}"


def _entries(run: Path) -> list[Path]:
    """What the folder `run` holds, besides a lock file (a killed run's is left behind, harmlessly)."""
    return [p for p in run.iterdir() if p.name != LOCK_NAME]


def _check_new(run: Path) -> None:
    """`run` may take a new run: it does not exist, or is an empty folder."""
    if run.exists() and not run.is_dir():
        raise ConfigError(f"{run}: exists and is not a folder; choose another --out (nothing was changed)")
    if run.is_dir() and _entries(run):
        raise ConfigError(f"{run}: the run folder exists and is not empty; use `condense resume {run}` "
                          "to continue it, or choose another --out (nothing was changed)")


@contextlib.contextmanager
def _run_lock(run: Path):
    """Hold `run`'s folder lock for the block (rank 0 only under torchrun; if it cannot take it,
    every rank stops with its error)."""
    with contextlib.ExitStack() as stack:
        def take() -> None:
            stack.enter_context(folder_lock(run))

        dist.on_main(take)
        yield


def _say(msg: str) -> None:
    print(f"[condense] {msg}", file=sys.stderr, flush=True)


def run_recipe(recipe_path: str | Path, out: str | Path, *, quiet: bool = False,
               trust_code: bool = False) -> dict[str, Any]:
    """Validate `recipe_path` completely, then run it into the new folder `out`."""
    recipe = load_recipe(recipe_path)
    validate_recipe(recipe, trust_code=trust_code)
    run = Path(out)
    dist.on_main(partial(_check_new, run))  # before the lock file goes in: a user's folder is never touched

    def prepare() -> None:
        _check_new(run)  # again under the lock: another `run` may have filled the folder meanwhile
        atomic_write_text(inside(run, run / RESOLVED), yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    with _run_lock(run):
        dist.on_main(prepare)
        return _execute(load_recipe(run / RESOLVED), run, quiet=quiet, trust_code=trust_code)


def resume_run(out: str | Path, *, quiet: bool = False, trust_code: bool = False) -> dict[str, Any]:
    """Continue the run in `out`: finished stages are skipped, the unfinished one continues."""
    run = Path(out)
    if not (run / RESOLVED).is_file():
        hint = (f"; the run was stopped before it wrote anything, start it again with `condense run RECIPE --out {run}`"
                if run.is_dir() and not _entries(run) else "")
        raise InputFileError(f"{run / RESOLVED}: missing; {run} is not a condense run folder{hint}")
    recipe = load_recipe(run / RESOLVED)
    validate_recipe(recipe, trust_code=trust_code)
    with _run_lock(run):
        return _execute(recipe, run, quiet=quiet, trust_code=trust_code)


def _stage_model(recipe: Recipe, run: Path, name: str | None, trust_code: bool = False):
    """The model an earlier stage produced, read back from its artifact (None for no stage)."""
    if name is None:
        return None
    j = next(k for k, s in enumerate(recipe.stages) if s.name == name)
    folder = stage_dir(run, j, name)
    if not STAGES.get(recipe.stages[j].kind).measured:  # a data stage passes its input model through
        return _stage_model(recipe, run, recipe.stages[j].source, trust_code)
    return load(folder, trust_code=trust_code)  # its condense.json names the factory the recipe named


def _execute(recipe: Recipe, run: Path, *, quiet: bool, trust_code: bool = False) -> dict[str, Any]:
    say = (lambda m: None) if quiet or not dist.is_main() else _say
    configs = validate_recipe(recipe, trust_code=trust_code)
    dist.on_main(partial(check_tree_inside, run))  # no symlink in the run folder leads out of it
    measure_cfg = MeasureConfig.from_dict(recipe.measure, where=f"{recipe.path} measure")
    data_kwargs = {k: v for k, v in recipe.data.items() if k != "name"}
    data_kwargs.setdefault("seed", recipe.seed)
    splits = load_dataset(recipe.data["name"], **data_kwargs)
    rows: list[dict[str, Any]] = []
    t_run = time.perf_counter()
    with stop_on_signals():
        for i, (spec, cfg) in enumerate(zip(recipe.stages, configs, strict=True)):
            folder = stage_dir(run, i, spec.name)
            kind = STAGES.get(spec.kind)
            # rank 0's view of the folder decides for every process (it alone writes there)
            done, resuming = dist.broadcast_object(((folder / DONE).exists(), folder.exists()))
            if done and not kind.measured:
                # a data stage is cheap and deterministic: redo it so later stages see its data
                say(f"stage {i + 1}/{len(recipe.stages)} {spec.name} ({spec.kind}): done, re-applied")
                model = _stage_model(recipe, run, spec.source, trust_code)
                out = run_kind(StageContext(recipe, spec, i, folder, splits, model, [], resume=True), cfg)
                splits = out.splits or splits
                continue
            if done:
                say(f"stage {i + 1}/{len(recipe.stages)} {spec.name} ({spec.kind}): done, skipped")
                rows.append(read_json(folder / "metrics.json", "stage metrics"))
                continue
            say(f"stage {i + 1}/{len(recipe.stages)} {spec.name} ({spec.kind}){' (resuming)' if resuming else ''}")
            dist.on_main(lambda folder=folder: inside(run, folder).mkdir(parents=True, exist_ok=True))

            def run_stage(i: int = i, spec: Any = spec, cfg: Any = cfg, kind: Any = kind, folder: Path = folder,
                          resuming: bool = resuming, splits: Any = splits) -> tuple[Any, float]:
                seed_everything(recipe.seed + 7919 * (i + 1))
                model = _stage_model(recipe, run, spec.source, trust_code)
                teachers = [_stage_model(recipe, run, t, trust_code) for t in spec.teachers]
                ctx = StageContext(recipe, spec, i, folder, splits, model, teachers, resume=resuming)
                t0 = time.perf_counter()
                return run_kind(ctx, cfg), time.perf_counter() - t0

            if not kind.measured:  # a data stage: every process needs the changed data
                out, _ = run_stage()
                splits = out.splits or splits
                dist.on_main(partial(_finish_data_stage, folder, spec, out, splits))
                say(f"  {spec.name}: data now {splits.summary()}")
                continue
            if kind.trains_for(cfg):  # every process trains (data-parallel under torchrun); rank 0 measures
                out, train_s = run_stage()
                row = dist.on_main(partial(_measure_stage, recipe, spec, folder, splits, measure_cfg, out, train_s))
            else:  # nothing to parallelise: rank 0 runs it and measures, the others wait
                row = dist.on_main(partial(_run_and_measure, run_stage, recipe, spec, folder, splits, measure_cfg))
            rows.append(row)
            quality = (f"test accuracy {row['accuracy']:.4f}" if row.get("accuracy") is not None
                       else f"test perplexity {row['perplexity']:.4g}" if row.get("perplexity") is not None
                       else f"test mean cosine to {rows[0]['stage'] if rows else 'itself'} {row['mean_cosine']:.4f}")
            say(f"  {spec.name}: {quality}, params {row['params']:,}, {row['bytes_onnx']:,} bytes ONNX")
    report = {"recipe": recipe.name, "data": recipe.data, "stages": rows, "condense": __version__}

    def finish() -> dict[str, Any]:
        if "onnxruntime" in measure_cfg.runtimes and rows:
            say("timing every deployed file against the first stage's, interleaved")
            report["latency_pass"] = latency_pass(recipe, run, rows, splits, measure_cfg)
        report["wall_time_s"] = round(time.perf_counter() - t_run, 1)
        return _write_report(run, report)

    return dist.on_main(finish)


def latency_pass(recipe: Recipe, run: Path, rows: list[dict[str, Any]], splits: Any,
                 measure_cfg: MeasureConfig) -> dict[str, Any]:
    """Every measured stage's deployed ONNX file timed against the first stage's in one interleaved
    ONNX Runtime pass (`condense.evaluate.timing.onnx_latency_pass`): the report states its
    latency ratios from this pass, not from stages timed minutes apart."""
    measured = [(i, s) for i, s in enumerate(recipe.stages) if STAGES.get(s.kind).measured]
    by_name = {r["stage"]: r for r in rows}
    files = {}
    for i, spec in measured:
        row = by_name.get(spec.name)
        path = stage_dir(run, i, spec.name) / str((row or {}).get("onnx_file") or "")
        if row is not None and row.get("onnx_file") and path.is_file():
            files[spec.name] = path
    if not files:
        return {"files": {}, "batches": {}, "reliable": True, "warnings": ["latency pass: no ONNX file to time"]}
    reference = rows[0]["stage"] if rows[0]["stage"] in files else next(iter(files))
    return onnx_latency_pass(files, reference, example_inputs(splits.test, 1), batch_sizes=measure_cfg.batch_sizes,
                             threads=measure_cfg.threads, repeats=measure_cfg.repeats, warmup=measure_cfg.warmup)


def _run_and_measure(run_stage: Any, recipe: Recipe, spec: Any, folder: Path, splits: Any,
                     measure_cfg: MeasureConfig) -> dict[str, Any]:
    out, seconds = run_stage()
    return _measure_stage(recipe, spec, folder, splits, measure_cfg, out, seconds)


def _finish_data_stage(folder: Path, spec: Any, out: Any, splits: Any) -> None:
    atomic_write_json(inside(folder.parent, folder / "reduce.json"), {"stage": spec.name, "kind": spec.kind, "info": out.info,
                                               "data": splits.summary()})
    atomic_write_text(inside(folder.parent, folder / DONE), json.dumps({"finished": time.time(), "condense": __version__}) + "\n")


def _measure_stage(recipe: Recipe, spec: Any, folder: Path, splits: Any, measure_cfg: MeasureConfig, out: Any,
                   train_s: float) -> dict[str, Any]:
    """Save, export and measure a stage's model; write metrics.json, then DONE (rank 0 only)."""
    meta = {"extra": {"stage": spec.to_dict(), "data": recipe.data, "run_info": out.info},
            "recipe": recipe.to_dict()}
    first = next(s.name for s in recipe.stages if STAGES.get(s.kind).measured)
    # encoders are scored against the run's first model (e.g. the uncompressed teacher); read lazily
    reference = None if first == spec.name else partial(_stage_model, recipe, folder.parent, first)
    row = measure_model(out.model, spec.name, folder, splits, measure_cfg, deployed_onnx=out.deployed_onnx,
                        metadata=meta, reference=reference)
    row.update({"kind": spec.kind, "from": spec.source, "teacher": spec.teachers[0] if spec.teachers else None,
                "teachers": spec.teachers, "stage_time_s": round(train_s, 2), "info": out.info})
    row["notes"] = [*row.get("notes", []), *out.notes]
    if "report" in out.info and isinstance(out.info["report"], dict):
        row["per_layer"] = out.info["report"].get("per_layer")
    atomic_write_json(inside(folder.parent, folder / "metrics.json"), row)
    atomic_write_text(inside(folder.parent, folder / DONE), json.dumps({"finished": time.time(), "condense": __version__}) + "\n")
    return row


def _write_report(run: Path, report: dict[str, Any]) -> dict[str, Any]:
    atomic_write_json(inside(run, run / "report.json"), report)
    paths = write_report(run)
    report["html"], report["illusions"] = str(paths.html), paths.illusions
    atomic_write_text(inside(run, run / DONE), "ok\n")
    return report
