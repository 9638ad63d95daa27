"""`condense demo | run | resume | recipe validate | init | report | tune`: recipes and whole runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from condense.cli.common import (
    EXIT_OK,
    add_data_opts,
    add_force_opt,
    add_model_opts,
    add_trust_code_opt,
    check_out_file,
    check_out_folder,
    data_from,
    load_model_arg,
    save_artifact,
    show,
    yaml_mapping,
)


def cmd_demo(args: argparse.Namespace) -> int:
    from condense.demo import run_demo

    report = run_demo(args.out, epochs=args.epochs, quiet=args.json, task=args.task, force=args.force)
    if args.json:
        show(report, True)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from condense.core.errors import ConfigError
    from condense.recipes import run_recipe

    out = Path(args.out)
    if out.exists() and not out.is_dir():  # the runner's own rule refuses a non-empty folder (use `resume`)
        raise ConfigError(f"{out}: exists and is not a folder; --out names the run folder to create (nothing was changed)")
    args.output_folder = out
    report = run_recipe(args.recipe, args.out, quiet=args.json, trust_code=args.trust_code)
    show(report, args.json, _run_text(report, args.out))
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from condense.recipes import resume_run

    args.output_folder = Path(args.run)
    report = resume_run(args.run, quiet=args.json, trust_code=args.trust_code)
    show(report, args.json, _run_text(report, args.run))
    return EXIT_OK


def _run_text(report: dict[str, Any], out: str) -> str:
    from condense.demo import format_table

    text = format_table(report["stages"], report.get("latency_pass"))
    text += "".join(f"\nwarning: {w}" for w in (report.get("latency_pass") or {}).get("warnings") or [])
    if report.get("html"):
        text += f"\n\nreport: {report['html']}"
    return text + f"\nrun folder: {out}"


def cmd_recipe_validate(args: argparse.Namespace) -> int:
    from condense.recipes import load_recipe, validate_recipe

    results = []
    for path in args.files:
        recipe = load_recipe(path)
        validate_recipe(recipe, trust_code=args.trust_code)
        results.append({"file": path, "name": recipe.name, "stages": [f"{s.name} ({s.kind})" for s in recipe.stages]})
    show(results, args.json, "\n".join(f"{r['file']}: ok — {', '.join(r['stages'])}" for r in results))
    return EXIT_OK


def cmd_recipe_kinds(args: argparse.Namespace) -> int:
    """Every stage kind a recipe may name, read from its method record (`condense.core.method`)."""
    from condense.core.method import METHODS

    METHODS.load_providers()
    rows = []
    for name in METHODS.names():
        m = METHODS.get(name)
        rows.append({"kind": name, "family": m.family, "trains": "when the method trains" if m.trains_when else m.trains,
                     "recover": m.edits_structure, "model": m.takes_model, "needs_input": m.needs_input,
                     "measured": m.measured, "deploys": m.deploys, "edit_kinds": list(m.edit_kinds), "command": m.cli,
                     "help": m.help})

    def flag(r: dict, key: str, word: str) -> str:
        return word if r[key] is True else (f"{word}?" if r[key] else "")

    text = "\n".join(f"{r['kind']:<13} {r['family']:<9} "
                     f"{' '.join(x for x in (flag(r, 'trains', 'train:'), flag(r, 'recover', 'recover:'), flag(r, 'model', 'model:')) if x):<25} "
                     f"{r['help']}" + (f"  [condense {r['command']}]" if r["command"] else "") for r in rows)
    show(rows, args.json, text)
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from condense.core.io import atomic_write_text
    from condense.recipes.template import TEMPLATE

    p = check_out_file(args, args.path, flag="PATH")
    atomic_write_text(p, TEMPLATE)
    print(f"wrote {p}; edit it, check it with `condense recipe validate {p}`, run it with `condense run {p}`")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from condense.report import write_report

    if args.out is not None:  # default: the run folder itself, where the report belongs
        o = Path(args.out)
        if o.suffix.lower() in (".html", ".htm"):  # report.html + .md + .json of that stem
            for p in (o, o.with_suffix(".md"), o.with_suffix(".json")):
                check_out_file(args, p)
        elif not (o.is_dir() and o.resolve() == Path(args.run).resolve()):
            check_out_folder(args, o)
    paths = write_report(args.run, args.out).to_dict()
    show(paths, args.json, "\n".join(f"{k}: {v}" for k, v in paths.items()))
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    from condense.core.errors import ConfigError
    from condense.train.distributed import world
    from condense.tune import TuneConfig, tune

    if world().distributed:
        raise ConfigError("condense tune times every trial's latency, which processes running side by side would "
                          "distort; run it without torchrun")
    check_out_folder(args, args.out)

    model, meta = load_model_arg(args.model, args.trust_pickle, trust_code=args.trust_code)
    splits, data_name, data_kwargs = data_from(args, meta)
    raw = yaml_mapping(args.config, "tune config")
    for key, value in (("tolerance", args.tolerance), ("objective", args.objective), ("max_trials", args.max_trials)):
        if value is not None:
            raw[key] = value
    cfg = TuneConfig.from_dict(raw, where=args.config or "condense tune")
    result = tune(model, splits, cfg)
    save_artifact(result.model, args.out, metrics={"tune": result.to_dict()},
                  extra={"data": {"name": data_name, "kwargs": data_kwargs}, "tune_config": cfg.to_dict()})
    lines = [f"{'trial':>5} {'ratio':>5} {'recover':>8} {'int8':>5} {'val acc':>8} {'objective':>10}"]
    for t in result.trials:
        mark = "*" if t["trial"] == result.chosen else ("p" if t["trial"] in result.pareto else " ")
        lines.append(f"{t['trial']:>4}{mark} {t['prune_ratio']:>5.2f} {t['recover']:>8} {str(t['quantize']):>5} "
                     f"{t['val_accuracy']:>8.4f} {t['objective']:>10.4g}")
    lines.append(result.message + f" -> saved {args.out} (* chosen, p Pareto)")
    show(result.to_dict(), args.json, "\n".join(lines))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `condense` subcommands."""
    sp = sub.add_parser("demo", help="run the whole chain on the bundled digits data")
    sp.add_argument("--out", default=None, help="run folder (default: ./condense-demo; ./condense-demo-text with "
                                                "--task text); an unfinished demo run there is resumed")
    sp.add_argument("--epochs", type=int, default=None, help="epochs of every training stage (default: the demo's)")
    sp.add_argument("--task", choices=["vision", "text"], default="vision",
                    help="vision: digits CNN chain (default); text: all-MiniLM-L6-v2 -> small BERT (nlp extra)")
    sp.add_argument("--force", action="store_true", help="replace a finished (or differently set) demo run in --out")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_demo)

    sp = sub.add_parser("tune", help="search pruning ratio / recovery / int8 under an accuracy tolerance")
    add_model_opts(sp)
    add_data_opts(sp)
    sp.add_argument("--config", help="YAML file with TuneConfig fields (search space, train: ...)")
    sp.add_argument("--tolerance", type=float, default=None, help="allowed validation accuracy drop, in points")
    sp.add_argument("--objective", choices=["latency", "bytes"], default=None)
    sp.add_argument("--max-trials", type=int, default=None)
    sp.add_argument("--out", required=True, help="artifact folder to write (new or empty; see --force)")
    add_force_opt(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_tune)

    sp = sub.add_parser("run", help="run a YAML recipe into a run folder (resumable)")
    sp.add_argument("recipe")
    sp.add_argument("--out", default="runs/run", help="run folder to create (must not exist or be empty)")
    add_trust_code_opt(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("resume", help="continue an interrupted run folder")
    sp.add_argument("run")
    add_trust_code_opt(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_resume)

    sp = sub.add_parser("recipe", help="recipe tools")
    rsub = sp.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    v = rsub.add_parser("validate", help="check recipes without running them")
    v.add_argument("files", nargs="+")
    add_trust_code_opt(v)
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_recipe_validate)
    k = rsub.add_parser("kinds", help="list the stage kinds a recipe may name, with the sections each takes")
    k.add_argument("--json", action="store_true")
    k.set_defaults(fn=cmd_recipe_kinds)

    sp = sub.add_parser("init", help="write a commented recipe template")
    sp.add_argument("path", nargs="?", default="recipe.yaml")
    sp.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    sp.set_defaults(fn=cmd_init)

    sp = sub.add_parser("report", help="write the HTML / Markdown / JSON report of a run folder")
    sp.add_argument("run")
    sp.add_argument("--out", default=None, help="output folder (new or empty; default: the run folder), or an .html "
                                                "path (the .md and .json files take its stem)")
    add_force_opt(sp, "a non-empty --out folder, or over existing report files")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_report)
