"""Reliability at larger counts than the test run: mutated recipes, corrupted artifacts, SIGKILL
at random moments of a 4-stage recipe. Figures go into docs/reliability.md.

The generators are the tests' own (`tests/_reliability.py`), so the benchmark measures exactly what
the tests assert, only more of it:

- recipes: `--recipes` mutations (10 kinds, see the generator) validated in-process with
  `condense recipe validate`; each must exit 0 (a mutation that stayed valid) or 2 with a
  `condense: error:` line, never raise, never take more than 20 s; the text attacks must exit 2;
- artifacts: every corruption of the matrix applied to a saved model and opened with
  `condense eval`; each must exit 3;
- SIGKILL: `--kills` seeded random moments of the 4-stage recipe of tests/test_recipes.py, each
  run resumed (`condense resume`) and its stage weights (sha256) and accuracies compared with an
  uninterrupted run.

- adversarial (issue 24): the matrix of `tests/_adversarial.py` (malicious model specs in artifacts
  and recipes, traversal stage names, a symlink out of an artifact folder, metadata memory bombs,
  a user's non-empty output folders, an output path that is a file, a full disk on a small tmpfs,
  NaN weights): cases, refused with the expected exit code, files outside touched, user files
  replaced, hostile code run.

    python benchmarks/reliability.py [--recipes 10000] [--kills 20] [--json benchmarks/results/reliability.json]
    python benchmarks/reliability.py --adversarial-only [--json benchmarks/results/reliability_adversarial.json]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import condense  # noqa: E402
from _adversarial import run_matrix  # noqa: E402
from _reliability import (  # noqa: E402
    artifact_cases,
    condense_process,
    deadline,
    kill_after,
    recipe_cases,
    run_digest,
)
from condense.cli import main as cli  # noqa: E402
from condense.core.io import atomic_write_json  # noqa: E402
from condense.recipes.runner import RESOLVED  # noqa: E402


def _quiet(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli(argv)
    return code, err.getvalue()


def fuzz_recipes(n: int, seed: int, work: Path) -> dict[str, Any]:
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    problems: list[str] = []
    slowest = 0.0

    for i, (what, data, must_fail) in enumerate(recipe_cases(n, seed)):
        kind = what.split(":")[0].split(" ")[0]
        p = work / f"r{i % 50}.yaml"
        p.write_bytes(data)
        t0 = time.perf_counter()
        try:
            with deadline(20, what):
                code, err = _quiet(["recipe", "validate", str(p)])
        except TimeoutError:
            code, err = -1, "hang"
        except BaseException as e:  # noqa: BLE001 - counted: a raise is the failure we look for
            code, err = -2, f"{type(e).__name__}: {e}"
        slowest = max(slowest, time.perf_counter() - t0)
        outcome = {0: "exit 0", 2: "exit 2"}.get(code, f"other ({code})")
        if code == 2 and not err.startswith("condense: error:"):
            outcome = "exit 2 without a typed message"
        if must_fail and code == 0:
            outcome = "accepted an attack"
        by_kind[kind][outcome] += 1
        if outcome not in ("exit 0", "exit 2"):
            problems.append(f"{what}: {outcome}: {err[-300:]}")
    total = collections.Counter()
    for c in by_kind.values():
        total.update(c)
    return {"n": n, "seed": seed, "total": dict(total), "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "slowest_s": round(slowest, 3), "problems": problems[:50], "pwned": (work / "PWNED").exists()}


def corrupt_artifacts(work: Path) -> dict[str, Any]:
    model = condense.build_model("mlp", in_features=64, num_classes=10, hidden=[16])
    saved = work / "saved"
    condense.save(model, saved)
    results = {}
    for what, corrupt in artifact_cases():
        folder = work / "corrupt"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(saved, folder)
        corrupt(folder)
        try:
            code, err = _quiet(["eval", str(folder), "--data", "digits"])
        except BaseException as e:  # noqa: BLE001
            code, err = -2, f"{type(e).__name__}: {e}"
        results[what] = {"exit": code, "message": err.strip().splitlines()[-1][:200] if err.strip() else ""}
    return {"cases": len(results), "exit_3": sum(r["exit"] == 3 for r in results.values()), "results": results}


def sigkill(kills: int, work: Path) -> dict[str, Any]:
    from test_recipes import KILL_RECIPE

    recipe = work / "r.yaml"
    recipe.write_text(KILL_RECIPE)
    t0 = time.time()
    if condense_process("run", str(recipe), "--out", str(work / "ref")).wait() != 0:
        raise SystemExit("the uninterrupted reference run failed")
    wall = time.time() - t0
    ref = run_digest(work / "ref")
    rng = random.Random(20)
    rows = []
    for i in range(kills):
        run = work / f"killed-{i}"
        at = rng.uniform(0.02, 0.98) * wall
        killed = kill_after(["run", str(recipe), "--out", str(run)], at) is None
        stages_done = sum(1 for d in run.glob("*/DONE")) if run.exists() else 0
        again = ["resume", str(run)] if (run / RESOLVED).is_file() else ["run", str(recipe), "--out", str(run)]
        code = condense_process(*again).wait() if killed else 0
        same = code == 0 and run_digest(run) == ref
        rows.append({"kill_at_s": round(at, 2), "killed": killed, "stages_done_at_kill": stages_done,
                     "then": again[0] if killed else "-", "exit": code, "bit_identical": same})
        print(f"kill {i}: at {at:.1f} s of {wall:.1f} s, {stages_done} stages done -> {again[0]} exit {code}, "
              f"identical {same}", flush=True)
        shutil.rmtree(run, ignore_errors=True)
    return {"reference_wall_s": round(wall, 1), "kills": kills, "bit_identical": sum(r["bit_identical"] for r in rows),
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--adversarial-only", action="store_true", help="only the issue-24 adversarial matrix")
    ap.add_argument("--json", default=None, help="default: results/reliability.json (reliability_adversarial.json "
                                                 "with --adversarial-only)")
    args = ap.parse_args()
    args.json = args.json or str(HERE / "results" / ("reliability_adversarial.json" if args.adversarial_only
                                                     else "reliability.json"))
    work = Path(tempfile.mkdtemp(prefix="reliability_"))
    out: dict[str, Any] = {"args": vars(args)}
    t0 = time.perf_counter()
    out["adversarial"] = run_matrix(work / "adversarial")
    for row in out["adversarial"]["rows"]:
        print(f"{'skip' if 'skipped' in row else ('ok' if row['ok'] else 'FAIL')}  exit {row.get('code', '-')}  "
              f"{row['case']}: {row.get('skipped') or row.get('message', '')[:120]}", flush=True)
    print("adversarial:", out["adversarial"]["counts"], flush=True)
    if args.adversarial_only:
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(Path(args.json), out)
        shutil.rmtree(work, ignore_errors=True)
        print(f"wrote {args.json} ({out['wall_s']} s)")
        return
    out["recipes"] = fuzz_recipes(args.recipes, args.seed, work)
    print("recipes:", out["recipes"]["total"], "slowest", out["recipes"]["slowest_s"], "s", flush=True)
    out["artifacts"] = corrupt_artifacts(work)
    print(f"artifacts: {out['artifacts']['exit_3']}/{out['artifacts']['cases']} exit 3", flush=True)
    if args.kills:
        out["sigkill"] = sigkill(args.kills, work)
        print(f"sigkill: {out['sigkill']['bit_identical']}/{args.kills} bit-identical", flush=True)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(Path(args.json), out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.json} ({out['wall_s']} s)")


if __name__ == "__main__":
    main()
