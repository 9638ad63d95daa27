"""The `condense` command line.

Exit codes: 0 ok; 2 bad usage or config; 3 bad input file; 4 run failure; 130 interrupted.
Every measuring command takes `--json` (machine-readable output on stdout).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_RUN, EXIT_INTERRUPTED = 0, 2, 3, 4, 130


def on_main(fn: Any) -> Any:
    """`fn()` on rank 0 only under torchrun (its result on every rank); `fn()` in a plain run."""
    from condense.train.distributed import on_main as _on_main

    return _on_main(fn)


def _kv(items: Sequence[str] | None, field: str) -> dict[str, Any]:
    """Parse `key=value` pairs; values are read as YAML scalars (numbers, bools, lists)."""
    import yaml

    from condense.core.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{field}: expected key=value, got {item!r}")
        try:
            out[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{field}: cannot read the value of {key!r} ({str(e).splitlines()[0]})") from None
    return out


def _print(obj: Any, as_json: bool, text: str | None = None) -> None:
    from condense.train.distributed import is_main

    if not is_main():  # under torchrun, rank 0 speaks for the run
        return
    if as_json:
        json.dump(obj, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text if text is not None else json.dumps(obj, indent=2, default=str))


#: `--data NAME:VALUE` shorthands: the option VALUE fills (`text:notes.jsonl`, `imagefolder:photos/`)
DATA_SHORTHAND = {"text": "path", "csv": "path", "jsonl": "path", "imagefolder": "root", "cifar10": "root",
                  "mnist": "root"}


def _data_from(args: argparse.Namespace, meta: dict[str, Any] | None = None, tokenizer: str | None = None):
    """(splits, name, kwargs) from --data / --data-arg, else the artifact's own data. `text` data
    without a tokenizer= option uses `tokenizer` (the folder of the hf: model being compressed)."""
    from condense.data import load_dataset

    name = args.data
    kwargs = _kv(args.data_arg, "--data-arg")
    if name and ":" in name and name.split(":", 1)[0] in DATA_SHORTHAND:
        name, value = name.split(":", 1)
        kwargs = {DATA_SHORTHAND[name]: value, **kwargs}
    if name is None and meta and meta.get("data"):
        name = meta["data"]["name"]
        kwargs = {**meta["data"].get("kwargs", {}), **kwargs}
    if name in ("text", "stdlib-text") and "tokenizer" not in kwargs and tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    return load_dataset(name or "digits", **kwargs), name or "digits", kwargs


def _layers_arg(text: str) -> int | list[int]:
    try:
        return int(text) if "," not in text else [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer count (3) or a list (0,2,4), got {text!r}") from None


def _hf_folder_of(arg: str, model: Any) -> str | None:
    """The folder holding an hf: model's tokenizer: the hf: folder itself, or the saved artifact."""
    from condense.models.hf import HFModel

    if not isinstance(model, HFModel):
        return None
    return arg[3:] if arg.startswith("hf:") else arg


def _test_metrics(model: Any, splits: Any, reference: Any | None) -> tuple[dict[str, Any], str]:
    """Test metrics and a one-line summary: accuracy on labelled classification data, else (an
    encoder on unlabelled text) how closely the outputs follow `reference` (the teacher)."""
    from condense.core.errors import ConfigError
    from condense.evaluate import evaluate
    from condense.models.hf import is_encoder

    if not is_encoder(model):
        m = evaluate(model, splits.test)
        return m, f"test accuracy {m['accuracy']:.4f}"
    if reference is None:
        raise ConfigError("this model's outputs are not class scores; compare it with a reference model")
    m = evaluate(model, splits.test, reference=reference)
    r = m["reference"]
    return m, f"test mean cosine to the teacher {r['mean_cosine']:.4f} (min {r['min_cosine']:.4f})"


def _load_model_arg(path: str, trust_pickle: bool):
    """An artifact folder, a Hugging Face folder as `hf:<folder>`, or a pickle with --trust-pickle
    -> (model, metadata or None)."""
    from condense.artifacts import load, read_metadata

    if path.startswith("hf:"):
        from condense.models import build_model

        return build_model(path), None
    p = Path(path)
    meta = read_metadata(p) if p.is_dir() else None
    return load(p, trust_pickle=trust_pickle), meta


def cmd_models(args: argparse.Namespace) -> int:
    from condense.models import list_models

    rows = list_models()
    _print([{"name": n, "help": h} for n, h in rows], args.json, "\n".join(f"{n:14s} {h}" for n, h in rows))
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace) -> int:
    from condense.data import list_datasets

    rows = list_datasets()
    _print([{"name": n, "help": h} for n, h in rows], args.json, "\n".join(f"{n:14s} {h}" for n, h in rows))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from condense.artifacts import save
    from condense.core.seed import seed_everything
    from condense.data import AugmentConfig, build_augment
    from condense.evaluate import evaluate
    from condense.models import build_model
    from condense.recipes.stages import model_kwargs_for
    from condense.train import TrainConfig, train_model

    splits, data_name, data_kwargs = _data_from(args)
    train_kwargs = _kv(args.set, "--set")
    cfg = TrainConfig.from_dict(
        {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
         "optimizer": args.optimizer, "checkpoint_dir": str(Path(args.out) / "checkpoint"), **train_kwargs},
        where="condense train",
    )
    seed_everything(cfg.seed)
    model = build_model(args.model, **model_kwargs_for(splits, _kv(args.model_arg, "--model-arg"), args.model))
    augment = build_augment(AugmentConfig.from_dict(_kv(args.augment, "--augment"), where="--augment"))
    result = train_model(model, splits.train, cfg, splits.val, augment=augment, resume=args.resume)

    def finish() -> dict[str, Any]:  # rank 0 only under torchrun
        metrics = evaluate(result.model, splits.test)
        save(result.model, args.out, metrics={"test": metrics, "fit": result.to_dict()},
             extra={"data": {"name": data_name, "kwargs": data_kwargs}, "train_config": cfg.to_dict()})
        return metrics

    metrics = on_main(finish)
    summary = {"artifact": str(args.out), "test_accuracy": metrics["accuracy"], "best_epoch": result.best_epoch,
               "val_accuracy": result.best_metric}
    _print(summary, args.json, f"saved {args.out}  test accuracy {metrics['accuracy']:.4f} (best epoch {result.best_epoch} on validation)")
    return EXIT_OK


def _yaml_mapping(path: str | None, what: str) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (never executes anything)."""
    import yaml

    from condense.core.errors import ConfigError, InputFileError

    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such {what} file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of {what} settings, got {type(data).__name__}")
    return data


def _train_overrides(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The `train:` mapping of a method config, with --epochs / --lr / --seed and a checkpoint folder."""
    train = dict(raw.get("train") or {})
    for key, value in (("epochs", args.epochs), ("lr", args.lr), ("seed", args.seed)):
        if value is not None:
            train[key] = value
    train.setdefault("checkpoint_dir", str(Path(args.out) / "checkpoint"))
    return train


def cmd_distill(args: argparse.Namespace) -> int:
    from condense.artifacts import save
    from condense.core.errors import ConfigError
    from condense.core.seed import seed_everything
    from condense.distill import DistillConfig, distill_fit, teacher_defaults
    from condense.models import build_model
    from condense.recipes.stages import model_kwargs_for

    teachers, metas = [], []
    for t in args.teacher:
        model, meta = _load_model_arg(t, args.trust_pickle)
        teachers.append(model)
        metas.append(meta)
    hf_folder = _hf_folder_of(args.teacher[0], teachers[0])
    splits, data_name, data_kwargs = _data_from(args, metas[0], tokenizer=hf_folder)
    raw = _yaml_mapping(args.config, "distillation config")
    for key, value in (("alpha", args.alpha), ("temperature", args.temperature)):
        if value is not None:
            raw[key] = value
    raw = teacher_defaults(raw, teachers[0])
    raw["train"] = _train_overrides(raw, args)
    cfg = DistillConfig.from_dict(raw, where=args.config or "condense distill")
    seed_everything(cfg.train.seed)
    student_kwargs = _kv(args.student_arg, "--student-arg")
    student_name = args.student
    if student_name is None:  # a BERT teacher's default student: its own layers, fewer of them
        student_name = f"hf:{hf_folder}" if hf_folder is not None else "cnn"
    if args.student_layers is not None:
        if not student_name.startswith("hf:"):
            raise ConfigError("--student-layers needs a Hugging Face teacher or student (hf:<folder>)")
        student_kwargs["layers"] = args.student_layers
    student = build_model(student_name, **model_kwargs_for(splits, student_kwargs, student_name))
    train_data = splits.train
    if args.transfer == "train+unlabelled" and splits.unlabelled is not None:
        from condense.recipes.stages import all_training_images

        train_data = all_training_images(splits)
    result = distill_fit(student, teachers, train_data, cfg, splits.val, resume=args.resume)

    def finish() -> tuple[dict[str, Any], str]:  # rank 0 only under torchrun
        metrics, line = _test_metrics(result.model, splits, teachers[0])
        save(result.model, args.out, metrics={"test": metrics, "fit": result.to_dict()},
             extra={"data": {"name": data_name, "kwargs": data_kwargs}, "distill_config": cfg.to_dict(),
                    "teachers": list(args.teacher)})
        return metrics, line

    metrics, line = on_main(finish)
    summary = {"artifact": str(args.out), "test": {k: v for k, v in metrics.items() if k != "confusion"},
               "best_epoch": result.best_epoch}
    if "accuracy" in metrics:
        summary["test_accuracy"] = metrics["accuracy"]
    _print(summary, args.json, f"saved {args.out}  student {line}")
    return EXIT_OK


def cmd_pretrain(args: argparse.Namespace) -> int:
    from condense.artifacts import save
    from condense.core.seed import seed_everything
    from condense.models import build_model
    from condense.recipes.stages import all_training_images, model_kwargs_for
    from condense.ssl import PretrainConfig, pretrain_fit

    splits, data_name, data_kwargs = _data_from(args)
    raw = _yaml_mapping(args.config, "pretrain config")
    if args.method:
        raw["method"] = args.method
    raw["train"] = _train_overrides(raw, args)
    cfg = PretrainConfig.from_dict(raw, where=args.config or "condense pretrain")
    seed_everything(cfg.train.seed)
    model = build_model(args.model, **model_kwargs_for(splits, _kv(args.model_arg, "--model-arg"), args.model))
    result = pretrain_fit(model, all_training_images(splits), cfg, resume=args.resume)
    on_main(lambda: save(result.model, args.out, metrics={"fit": result.to_dict()},
                         extra={"data": {"name": data_name, "kwargs": data_kwargs}, "pretrain_config": cfg.to_dict()}))
    last = result.history[-1] if result.history else {}
    _print({"artifact": args.out, "final_train_loss": last.get("train_loss")}, args.json,
           f"saved {args.out} (self-supervised {cfg.method}; final loss {last.get('train_loss', float('nan')):.4f}); "
           "fine-tune it on labelled data next: condense train --set ... or a finetune recipe stage")
    return EXIT_OK


def cmd_reduce(args: argparse.Namespace) -> int:
    from condense.core.io import atomic_write_json
    from condense.reduce import reduce_data

    model, meta = (None, None)
    if args.model:
        model, meta = _load_model_arg(args.model, args.trust_pickle)
    splits, data_name, data_kwargs = _data_from(args, meta)
    raw = {**_yaml_mapping(args.config, "reduce config"), **_kv(args.set, "--set")}
    if args.method:
        raw["method"] = args.method
    result = reduce_data(splits, raw, model=model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"method": result.method, "data": data_name, "before": splits.summary(), "after": result.data.summary(),
               "info": result.info}
    if result.positions is not None:
        summary["positions"] = [int(p) for p in result.positions]
    if result.transform is not None and hasattr(result.transform, "save"):
        result.transform.save(out / "transform.json")
    atomic_write_json(out / "reduce.json", summary)
    _print(summary, args.json, f"{result.method}: {splits.summary()['train']} train samples x {splits.input_shape} -> "
           f"{result.data.summary()['train']} x {result.data.input_shape}; wrote {out / 'reduce.json'}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from condense.evaluate import evaluate

    meta = None
    target: Any = args.model
    if not str(args.model).endswith(".onnx"):
        target, meta = _load_model_arg(args.model, args.trust_pickle)
    splits, _, _ = _data_from(args, meta)
    data = getattr(splits, args.split)
    metrics = evaluate(target, data, threads=args.threads)
    text = (f"{args.split}: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1_macro']:.4f}  "
            f"loss {metrics['loss']:.4f}  (n={metrics['n']}, runtime {metrics.get('runtime')})")
    _print(metrics, args.json, text)
    return EXIT_OK


def cmd_profile(args: argparse.Namespace) -> int:
    from condense.data.loader import example_inputs
    from condense.evaluate import profile

    model, meta = _load_model_arg(args.model, args.trust_pickle)
    splits, _, _ = _data_from(args, meta)
    example = example_inputs(splits.test, 1)
    result = profile(model, example, runtimes=tuple(args.runtimes), batch_sizes=tuple(args.batch_sizes),
                     threads=args.threads, artifact_path=args.model)
    _print(result, args.json, _profile_text(result))
    return EXIT_OK


def _profile_text(p: dict[str, Any]) -> str:
    lines = [f"params {p['params']:,}  nonzero {p['nonzero_params']:,}  FLOPs/sample {p['flops']:,}  MACs/sample {p['macs']:,}"]
    if p.get("artifact_bytes") is not None:
        lines.append(f"artifact bytes on disk {p['artifact_bytes']:,}")
    for rt, by_bs in p.get("latency", {}).items():
        for bs, lat in by_bs.items():
            lines.append(f"{rt:12s} batch {bs:>4}: p50 {lat['p50_ms']:.3f} ms  p90 {lat['p90_ms']:.3f} ms")
    lines.append(f"threads {p.get('threads')}")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from condense.data.loader import example_inputs
    from condense.export import export_onnx

    model, meta = _load_model_arg(args.model, args.trust_pickle)
    splits, _, _ = _data_from(args, meta)
    res = export_onnx(model, example_inputs(splits.test, 1), args.out, atol=args.atol)
    info = {"path": str(res.path), "bytes": res.bytes, "exporter": res.exporter, "max_abs_diff": res.max_abs_diff}
    _print(info, args.json, f"wrote {res.path} ({res.bytes:,} bytes, {res.exporter} exporter); max |onnx - torch| = {res.max_abs_diff:.2e}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from condense.recipes import run_recipe

    report = run_recipe(args.recipe, args.out, quiet=args.json)
    _print(report, args.json, _run_text(report, args.out))
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from condense.recipes import resume_run

    report = resume_run(args.run, quiet=args.json)
    _print(report, args.json, _run_text(report, args.run))
    return EXIT_OK


def _run_text(report: dict[str, Any], out: str) -> str:
    from condense.demo import format_table

    text = format_table(report["stages"])
    if report.get("html"):
        text += f"\n\nreport: {report['html']}"
    return text + f"\nrun folder: {out}"


def cmd_recipe_validate(args: argparse.Namespace) -> int:
    from condense.recipes import load_recipe, validate_recipe

    results = []
    for path in args.files:
        recipe = load_recipe(path)
        validate_recipe(recipe)
        results.append({"file": path, "name": recipe.name, "stages": [f"{s.name} ({s.kind})" for s in recipe.stages]})
    _print(results, args.json, "\n".join(f"{r['file']}: ok — {', '.join(r['stages'])}" for r in results))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from condense.core.errors import ConfigError
    from condense.core.io import atomic_write_text
    from condense.recipes.template import TEMPLATE

    p = Path(args.path)
    if p.exists() and not args.force:
        raise ConfigError(f"{p}: exists; pass --force to overwrite it")
    atomic_write_text(p, TEMPLATE)
    print(f"wrote {p}; edit it, check it with `condense recipe validate {p}`, run it with `condense run {p}`")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from condense.report import write_report

    paths = write_report(args.run, args.out).to_dict()
    _print(paths, args.json, "\n".join(f"{k}: {v}" for k, v in paths.items()))
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    from condense.artifacts import save
    from condense.core.errors import ConfigError
    from condense.train.distributed import world
    from condense.tune import TuneConfig, tune

    if world().distributed:
        raise ConfigError("condense tune times every trial's latency, which processes running side by side would "
                          "distort; run it without torchrun")

    model, meta = _load_model_arg(args.model, args.trust_pickle)
    splits, data_name, data_kwargs = _data_from(args, meta)
    raw = _yaml_mapping(args.config, "tune config")
    for key, value in (("tolerance", args.tolerance), ("objective", args.objective), ("max_trials", args.max_trials)):
        if value is not None:
            raw[key] = value
    cfg = TuneConfig.from_dict(raw, where=args.config or "condense tune")
    result = tune(model, splits, cfg)
    save(result.model, args.out, metrics={"tune": result.to_dict()},
         extra={"data": {"name": data_name, "kwargs": data_kwargs}, "tune_config": cfg.to_dict()})
    lines = [f"{'trial':>5} {'ratio':>5} {'recover':>8} {'int8':>5} {'val acc':>8} {'objective':>10}"]
    for t in result.trials:
        mark = "*" if t["trial"] == result.chosen else ("p" if t["trial"] in result.pareto else " ")
        lines.append(f"{t['trial']:>4}{mark} {t['prune_ratio']:>5.2f} {t['recover']:>8} {str(t['quantize']):>5} "
                     f"{t['val_accuracy']:>8.4f} {t['objective']:>10.4g}")
    lines.append(result.message + f" -> saved {args.out} (* chosen, p Pareto)")
    _print(result.to_dict(), args.json, "\n".join(lines))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from condense.demo import run_demo

    report = run_demo(args.out, epochs=args.epochs, quiet=args.json, task=args.task)
    if args.json:
        _print(report, True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="condense", description="Make trained PyTorch models small and fast, and prove it.")
    from condense import __version__

    p.add_argument("--version", action="version", version=f"condense {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_opts(sp: argparse.ArgumentParser, default: str | None = None) -> None:
        sp.add_argument("--data", default=default, help="dataset name (see `condense datasets`); default: the model's own")
        sp.add_argument("--data-arg", action="append", metavar="K=V", help="dataset option, e.g. root=/data/cifar (repeatable)")

    def model_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", help="artifact folder written by condense, hf:<Hugging Face folder>, "
                                      "(or a .pt pickle with --trust-pickle)")
        sp.add_argument("--trust-pickle", action="store_true", help="allow loading a pickle checkpoint (runs code from the file)")

    sp = sub.add_parser("demo", help="run the whole chain on the bundled digits data")
    sp.add_argument("--out", default="condense-demo", help="run folder (default: ./condense-demo)")
    sp.add_argument("--epochs", type=int, default=None, help="epochs of every training stage (default: the demo's)")
    sp.add_argument("--task", choices=["vision", "text"], default="vision",
                    help="vision: digits CNN chain (default); text: all-MiniLM-L6-v2 -> small BERT (nlp extra)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_demo)

    sp = sub.add_parser("train", help="train a zoo model on a dataset and save the artifact")
    sp.add_argument("--model", default="cnn", help="zoo name or package.module:factory")
    sp.add_argument("--model-arg", action="append", metavar="K=V", help="model option, e.g. width=16 (repeatable)")
    data_opts(sp, "digits")
    sp.add_argument("--epochs", type=int, default=10)
    sp.add_argument("--lr", type=float, default=3e-3)
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--optimizer", default="adamw")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--set", action="append", metavar="K=V", help="any other TrainConfig field, e.g. schedule=step")
    sp.add_argument("--augment", action="append", metavar="K=V", help="augmentation, e.g. shift=1 or noise=0.05")
    sp.add_argument("--out", required=True, help="artifact folder to write")
    sp.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("distill", help="distill one or more teacher artifacts into a new student")
    sp.add_argument("--teacher", action="append", required=True, help="teacher artifact folder or hf:<folder> (repeat for multi-teacher)")
    sp.add_argument("--trust-pickle", action="store_true")
    sp.add_argument("--student", default=None, help="student: zoo name, package.module:factory or hf:<folder> "
                    "(default: cnn, or the teacher's own folder for an hf: teacher)")
    sp.add_argument("--student-layers", default=None, type=_layers_arg, metavar="N|I,J,K",
                    help="hf: student keeps N evenly spread layers of its folder, or the listed ones (0-based)")
    sp.add_argument("--student-arg", action="append", metavar="K=V", help="student option, e.g. width=8")
    data_opts(sp)
    sp.add_argument("--config", help="YAML file with DistillConfig fields (losses, alpha, temperature, teacher_mix, train: ...)")
    sp.add_argument("--alpha", type=float, default=None, help="weight of the teacher's signal (1 = label-free)")
    sp.add_argument("--temperature", type=float, default=None)
    sp.add_argument("--epochs", type=int, default=None)
    sp.add_argument("--lr", type=float, default=None)
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--transfer", choices=["train", "train+unlabelled"], default="train",
                    help="transfer set: labelled train split, or also the unlabelled part (needs alpha 1)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--resume", action="store_true")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_distill)

    sp = sub.add_parser("pretrain", help="self-supervised pretraining on every training image (no labels read)")
    sp.add_argument("--model", default="cnn")
    sp.add_argument("--model-arg", action="append", metavar="K=V")
    data_opts(sp, "digits")
    sp.add_argument("--method", choices=["simclr", "byol", "mae"], default=None)
    sp.add_argument("--config", help="YAML file with PretrainConfig fields")
    sp.add_argument("--epochs", type=int, default=None)
    sp.add_argument("--lr", type=float, default=None)
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--out", required=True)
    sp.add_argument("--resume", action="store_true")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_pretrain)

    sp = sub.add_parser("reduce", help="reduce data: PCA / feature selection of inputs, or a coreset of samples")
    sp.add_argument("--model", default=None, help="artifact whose embeddings drive a coreset (optional)")
    sp.add_argument("--trust-pickle", action="store_true")
    data_opts(sp, "digits")
    sp.add_argument("--method", choices=["pca", "select", "coreset"], default=None)
    sp.add_argument("--config", help="YAML file with the method's fields")
    sp.add_argument("--set", action="append", metavar="K=V", help="method option, e.g. n_components=8 or fraction=0.25")
    sp.add_argument("--out", required=True, help="folder for reduce.json (+ transform.json)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_reduce)

    sp = sub.add_parser("eval", help="accuracy, top-k, macro P/R/F1, confusion matrix of a model or .onnx file")
    sp.add_argument("model", help="artifact folder, hf:<folder> or .onnx file")
    sp.add_argument("--trust-pickle", action="store_true")
    data_opts(sp)
    sp.add_argument("--split", choices=["test", "val", "train"], default="test")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("profile", help="params, bytes on disk, FLOPs/MACs, latency per runtime")
    model_opts(sp)
    data_opts(sp)
    sp.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"])
    sp.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256])
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_profile)

    sp = sub.add_parser("export", help="export to ONNX (fp32) with a parity check against PyTorch")
    model_opts(sp)
    data_opts(sp)
    sp.add_argument("--out", required=True, help="path of the .onnx file to write")
    sp.add_argument("--atol", type=float, default=1e-4)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("tune", help="search pruning ratio / recovery / int8 under an accuracy tolerance")
    model_opts(sp)
    data_opts(sp)
    sp.add_argument("--config", help="YAML file with TuneConfig fields (search space, train: ...)")
    sp.add_argument("--tolerance", type=float, default=None, help="allowed validation accuracy drop, in points")
    sp.add_argument("--objective", choices=["latency", "bytes"], default=None)
    sp.add_argument("--max-trials", type=int, default=None)
    sp.add_argument("--out", required=True)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_tune)

    sp = sub.add_parser("run", help="run a YAML recipe into a run folder (resumable)")
    sp.add_argument("recipe")
    sp.add_argument("--out", default="runs/run", help="run folder to create (must not exist or be empty)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("resume", help="continue an interrupted run folder")
    sp.add_argument("run")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_resume)

    sp = sub.add_parser("recipe", help="recipe tools")
    rsub = sp.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    v = rsub.add_parser("validate", help="check recipes without running them")
    v.add_argument("files", nargs="+")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_recipe_validate)

    sp = sub.add_parser("init", help="write a commented recipe template")
    sp.add_argument("path", nargs="?", default="recipe.yaml")
    sp.add_argument("--force", action="store_true")
    sp.set_defaults(fn=cmd_init)

    sp = sub.add_parser("report", help="write the HTML / Markdown / JSON report of a run folder")
    sp.add_argument("run")
    sp.add_argument("--out", default=None, help="output folder (default: the run folder)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_report)

    from condense.lowrank.cli import register as register_lowrank
    from condense.prune.cli import register as register_prune
    from condense.quantize.cli import register as register_quantize

    register_prune(sub)
    register_quantize(sub)
    register_lowrank(sub)

    for name, fn, help_ in (("models", cmd_models, "list the model zoo"), ("datasets", cmd_datasets, "list data sources")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(fn=fn)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from condense.core.errors import CondenseError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    from condense.train import distributed as dist
    from condense.train.signals import stop_on_signals

    try:
        with stop_on_signals():  # training commands stop at a step boundary with a checkpoint
            return int(args.fn(args) or 0)
    except CondenseError as e:
        print(f"condense: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("condense: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        dist.destroy()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
