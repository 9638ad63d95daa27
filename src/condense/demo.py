"""`condense demo`: the whole chain on the bundled digits data, measured.

Runs the shipped recipe `recipes/demo.yaml` (teacher on 30 % of the labels -> the final
architecture trained alone as the baseline -> a wider student distilled label-free on every image
-> channel pruning with distillation recovery -> static int8 -> int8 ONNX export), prints the
before/after table and writes the HTML / Markdown / JSON report in the run folder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from condense.core.errors import ConfigError
from condense.core.io import LOCK_NAME
from condense.models.hf_folder import packaged_model_dir
from condense.recipes import load_recipe, resume_run, run_recipe
from condense.recipes.runner import DONE, RESOLVED

LATENCY_BATCHES = (1, 256)


def format_table(rows: list[dict[str, Any]], latency_pass: dict[str, Any] | None = None) -> str:
    """A plain-text before/after table (latency is the median in ms; ONNX Runtime's from the run's
    interleaved `latency_pass` where it timed the stage; "-" where a runtime has no latency, e.g.
    the torch int8 simulation, which is no deployment runtime)."""
    passed = {}
    for bs, res in ((latency_pass or {}).get("batches") or {}).items():
        for name, t in ((res or {}).get("timings") or {}).items():
            passed.setdefault(name, {})[str(bs)] = t["wall_ms"]
    rows = [{**r, "latency_ms": {**r["latency_ms"], "onnxruntime": {**r["latency_ms"].get("onnxruntime", {}),
                                                                       **passed.get(r["stage"], {})}}}
            for r in rows]
    batches = sorted({int(b) for r in rows for by in r["latency_ms"].values() for b in by}) or list(LATENCY_BATCHES)
    runtimes = [rt for rt in ("torch", "onnxruntime") if any(rt in r["latency_ms"] for r in rows)]
    short = {"torch": "torch", "onnxruntime": "ort"}
    encoder = all(r.get("accuracy") is None and r.get("mean_cosine") is not None for r in rows)
    decoder = all(r.get("accuracy") is None and r.get("perplexity") is not None for r in rows)
    head = ["stage", "cos" if encoder else "ppl" if decoder else "acc", "params", "bytes(st)", "bytes(onnx)", "MFLOPs",
            *(f"{short[rt]} b{bs} ms" for rt in runtimes for bs in batches)]
    lines = []
    for r in rows:
        lat = r["latency_ms"]
        lines.append([
            r["stage"], f"{r['mean_cosine']:.4f}" if encoder else f"{r['perplexity']:.4g}" if decoder
            else f"{100 * r['accuracy']:.2f}%", f"{r['params']:,}",
            f"{r['bytes_safetensors']:,}",
            f"{r['bytes_onnx']:,}", f"{r['flops'] / 1e6:.2f}",
            *(f"{lat[rt][str(bs)]:.3f}" if str(bs) in lat.get(rt, {}) else "-" for rt in runtimes for bs in batches),
        ])
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False)))  # noqa: E731
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(x) for x in lines]
    return "\n".join(out)


DEMO_RECIPE = Path(__file__).with_name("recipes") / "demo.yaml"
DEMO_RECIPES = {"vision": DEMO_RECIPE, "text": Path(__file__).with_name("recipes") / "demo_text.yaml"}
#: the default run folder of each demo (each its own, so one never meets the other's run)
DEMO_FOLDERS = {"vision": "condense-demo", "text": "condense-demo-text"}
MINILM_PLACEHOLDER = "hf:{minilm}"


def _resolve_placeholders(data: Any, minilm: str) -> Any:
    if isinstance(data, dict):
        return {k: _resolve_placeholders(v, minilm) for k, v in data.items()}
    if isinstance(data, list):
        return [_resolve_placeholders(v, minilm) for v in data]
    return f"hf:{minilm}" if data == MINILM_PLACEHOLDER else data


def _write_recipe(task: str, epochs: int | None, tmp: Path) -> Path:
    """The demo's recipe file: the shipped one, or a copy in `tmp` with the MiniLM folder filled in
    and `epochs` set on every training stage."""
    import yaml

    recipe_path = DEMO_RECIPES[task]
    text = recipe_path.read_text()
    if epochs is None and MINILM_PLACEHOLDER not in text:
        return recipe_path
    data = yaml.safe_load(text)
    if MINILM_PLACEHOLDER in text:

        data = _resolve_placeholders(data, str(packaged_model_dir()))
    for stage in data["stages"]:
        if "train" in stage and epochs is not None:
            stage["train"]["epochs"] = epochs
    out = tmp / recipe_path.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _existing_run(run: Path, recipe_path: Path, force: bool) -> bool:
    """What to do with the run folder `run`: False = start a new run there, True = resume the
    unfinished run of this same demo. Anything else is refused (nothing changed): a folder that is
    not a condense run, a finished run and a run of other settings, unless `force` (demo runs only)."""
    import shutil


    # a lock file alone is what a run killed before it wrote anything leaves behind
    if not run.exists() or (run.is_dir() and not any(p.name != LOCK_NAME for p in run.iterdir())):
        return False
    if not (run / RESOLVED).is_file():
        raise ConfigError(f"{run}: exists and is not a condense run folder; choose another --out (nothing was changed)")
    found = load_recipe(run / RESOLVED)
    if found.name not in {"demo", "demo-text"}:
        raise ConfigError(f"{run}: holds a run of the recipe {found.name!r}, not a demo; choose another --out "
                          "(nothing was changed)")
    if force:
        shutil.rmtree(run)
        return False
    if (run / DONE).exists():
        raise ConfigError(f"{run}: holds a finished demo run (its report: {run / 'report.html'}); pass --force to "
                          "replace it, or --out DIR to run the demo into another folder (nothing was changed)")
    if found.to_dict() != load_recipe(recipe_path).to_dict():
        raise ConfigError(f"{run}: holds an unfinished run of the {found.name!r} recipe with other settings "
                          "(task or --epochs); pass --force to replace it, or --out DIR to run the demo into "
                          "another folder (nothing was changed)")
    return True


def run_demo(out: str | Path | None = None, *, epochs: int | None = None, quiet: bool = False,
             task: str = "vision", force: bool = False) -> dict[str, Any]:
    """Run a shipped demo recipe into `out`; return the report.

    `task`: "vision" (digits: CNN teacher -> distilled student -> pruned -> int8) or "text"
    (all-MiniLM-L6-v2 -> 3-layer student -> pruned heads / FFN -> int8, on the standard
    library's prose; needs the `nlp` extra). `out` defaults to `./condense-demo` (vision) or
    `./condense-demo-text` (text). An unfinished run of the same demo there is resumed; a finished
    one, or one with other settings, is refused unless `force` replaces it. `epochs` scales every
    training stage (for a quicker look); the shipped settings are the ones whose numbers
    docs/demo.md records.
    """
    import sys
    import tempfile


    if task not in DEMO_RECIPES:
        raise ConfigError(f"demo: unknown task {task!r}; expected one of {', '.join(DEMO_RECIPES)}")
    run = Path(out if out is not None else DEMO_FOLDERS[task])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="condense-demo-") as tmp:
        recipe_path = _write_recipe(task, epochs, Path(tmp))
        if _existing_run(run, recipe_path, force):
            if not quiet:
                print(f"[condense] {run}: resuming the unfinished demo run there (--force starts it over)",
                      file=sys.stderr, flush=True)
            report = resume_run(run, quiet=quiet)
        else:
            report = run_recipe(recipe_path, run, quiet=quiet)
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    if not quiet:
        print(format_table(report["stages"], report.get("latency_pass")))
        for w in (report.get("latency_pass") or {}).get("warnings") or []:
            print(f"warning: {w}")
        rows = {r["stage"]: r for r in report["stages"]}
        if "student-copy" in rows and "student" in rows:
            print(f"\nstudent with copied layers: mean cosine {rows['student-copy']['mean_cosine']:.4f} to the teacher; "
                  f"distilled: {rows['student']['mean_cosine']:.4f} (held-out paragraphs)")
        if "student-alone" in rows and rows[report["stages"][-1]["stage"]].get("accuracy") is not None:
            final = report["stages"][-1]
            print(f"\n{final['stage']} (distilled, pruned, int8): {100 * final['accuracy']:.2f}%; the same architecture "
                  f"trained alone on the labels: {100 * rows['student-alone']['accuracy']:.2f}%; teacher "
                  f"{100 * report['stages'][0]['accuracy']:.2f}% (one seed; docs/demo.md has ten)")
        print(f"report: {report.get('html')}  ({report['wall_time_s']} s)")
    return report
