"""`condense demo`: the whole chain on the bundled digits data, measured.

Runs the shipped recipe `recipes/demo.yaml` (teacher -> student alone and distilled -> channel
pruning with distillation recovery -> static int8 -> int8 ONNX export), prints the before/after
table and writes the HTML / Markdown / JSON report in the run folder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from condense.core.errors import ConfigError

LATENCY_BATCHES = (1, 256)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text before/after table (latency is the median in ms)."""
    batches = sorted({int(b) for r in rows for by in r["latency_ms"].values() for b in by}) or list(LATENCY_BATCHES)
    runtimes = [rt for rt in ("torch", "onnxruntime") if any(rt in r["latency_ms"] for r in rows)]
    short = {"torch": "torch", "onnxruntime": "ort"}
    head = ["stage", "acc", "params", "bytes(st)", "bytes(onnx)", "MFLOPs",
            *(f"{short[rt]} b{bs} ms" for rt in runtimes for bs in batches)]
    lines = []
    for r in rows:
        lat = r["latency_ms"]
        lines.append([
            r["stage"], f"{100 * r['accuracy']:.2f}%", f"{r['params']:,}", f"{r['bytes_safetensors']:,}",
            f"{r['bytes_onnx']:,}", f"{r['flops'] / 1e6:.2f}",
            *(f"{lat.get(rt, {}).get(str(bs), float('nan')):.3f}" for rt in runtimes for bs in batches),
        ])
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False)))  # noqa: E731
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(x) for x in lines]
    return "\n".join(out)


DEMO_RECIPE = Path(__file__).with_name("recipes") / "demo.yaml"


def run_demo(out: str | Path = "condense-demo", *, epochs: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the shipped demo recipe into `out` (replacing an earlier demo run there); return the report.

    `epochs` scales every training stage (for a quicker look); the shipped settings are the
    ones whose numbers docs/demo.md records.
    """
    import shutil
    import tempfile

    import yaml

    from condense.recipes import run_recipe

    run = Path(out)
    if run.exists():
        if not (run / "recipe.yaml").exists() and any(run.iterdir()):
            raise ConfigError(f"{run}: exists and is not a condense run folder; choose another --out")
        shutil.rmtree(run)
    recipe_path = DEMO_RECIPE
    if epochs is not None:
        data = yaml.safe_load(DEMO_RECIPE.read_text())
        for stage in data["stages"]:
            if "train" in stage:
                stage["train"]["epochs"] = epochs
        tmp = Path(tempfile.mkdtemp(prefix="condense-demo-")) / "demo.yaml"
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        recipe_path = tmp
    t0 = time.perf_counter()
    report = run_recipe(recipe_path, run, quiet=quiet)
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    if not quiet:
        print(format_table(report["stages"]))
        rows = {r["stage"]: r for r in report["stages"]}
        if "student-alone" in rows and "student" in rows:
            print(f"\nstudent alone {100 * rows['student-alone']['accuracy']:.2f}% vs distilled "
                  f"{100 * rows['student']['accuracy']:.2f}% (same architecture, epochs and optimizer)")
        print(f"report: {report.get('html')}  ({report['wall_time_s']} s)")
    return report
