"""`condense train | distill | pretrain | reduce`: commands that train a model or change its data."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from condense.cli.common import (
    EXIT_OK,
    add_data_opts,
    add_force_opt,
    add_trust_code_opt,
    check_out_folder,
    data_from,
    has_checkpoint,
    heldout_metrics,
    hf_folder_of,
    kv,
    layers_arg,
    load_model_arg,
    on_main,
    save_artifact,
    show,
    train_overrides,
    yaml_mapping,
)


def cmd_train(args: argparse.Namespace) -> int:
    from condense.core.seed import seed_everything
    from condense.data import AugmentConfig, build_augment
    from condense.evaluate import evaluate
    from condense.models import build_model
    from condense.recipes.stages import model_kwargs_for
    from condense.train import TrainConfig, train_model

    check_out_folder(args, args.out, resumable=args.resume and has_checkpoint(args.out))
    splits, data_name, data_kwargs = data_from(args)
    train_kwargs = kv(args.set, "--set")
    cfg = TrainConfig.from_dict(
        {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
         "optimizer": args.optimizer, "checkpoint_dir": str(Path(args.out) / "checkpoint"), **train_kwargs},
        where="condense train",
    )
    seed_everything(cfg.seed)
    model = build_model(args.model, **model_kwargs_for(splits, kv(args.model_arg, "--model-arg"), args.model))
    augment = build_augment(AugmentConfig.from_dict(kv(args.augment, "--augment"), where="--augment"))
    result = train_model(model, splits.train, cfg, splits.val, augment=augment, resume=args.resume)

    def finish() -> dict[str, Any]:  # rank 0 only under torchrun
        metrics = evaluate(result.model, splits.test)
        save_artifact(result.model, args.out, metrics={"test": metrics, "fit": result.to_dict()},
                      extra={"data": {"name": data_name, "kwargs": data_kwargs}, "train_config": cfg.to_dict()})
        return metrics

    metrics = on_main(finish)
    summary = {"artifact": str(args.out), "test_accuracy": metrics["accuracy"], "best_epoch": result.best_epoch,
               "val_accuracy": result.best_metric}
    show(summary, args.json, f"saved {args.out}  test accuracy {metrics['accuracy']:.4f} (best epoch {result.best_epoch} on validation)")
    return EXIT_OK


def cmd_distill(args: argparse.Namespace) -> int:
    from condense.core.errors import ConfigError
    from condense.core.seed import seed_everything
    from condense.distill import DistillConfig, distill_fit, teacher_defaults
    from condense.models import build_model
    from condense.recipes.stages import model_kwargs_for

    check_out_folder(args, args.out, resumable=args.resume and has_checkpoint(args.out))
    teachers, metas = [], []
    for t in args.teacher:
        model, meta = load_model_arg(t, args.trust_pickle, trust_code=args.trust_code)
        teachers.append(model)
        metas.append(meta)
    hf_folder = hf_folder_of(args.teacher[0], teachers[0])
    splits, data_name, data_kwargs = data_from(args, metas[0], tokenizer=hf_folder)
    raw = yaml_mapping(args.config, "distillation config")
    for key, value in (("alpha", args.alpha), ("temperature", args.temperature)):
        if value is not None:
            raw[key] = value
    raw = teacher_defaults(raw, teachers[0])
    raw["train"] = train_overrides(raw, args)
    cfg = DistillConfig.from_dict(raw, where=args.config or "condense distill")
    seed_everything(cfg.train.seed)
    student_kwargs = kv(args.student_arg, "--student-arg")
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
        from condense.data.transfer import all_training_images

        train_data = all_training_images(splits)
    result = distill_fit(student, teachers, train_data, cfg, splits.val, resume=args.resume)

    def finish() -> tuple[dict[str, Any], str]:  # rank 0 only under torchrun
        metrics, line = heldout_metrics(result.model, splits, teachers[0])
        save_artifact(result.model, args.out, metrics={"test": metrics, "fit": result.to_dict()},
                      extra={"data": {"name": data_name, "kwargs": data_kwargs}, "distill_config": cfg.to_dict(),
                             "teachers": list(args.teacher)})
        return metrics, line

    metrics, line = on_main(finish)
    summary = {"artifact": str(args.out), "test": {k: v for k, v in metrics.items() if k != "confusion"},
               "best_epoch": result.best_epoch}
    if "accuracy" in metrics:
        summary["test_accuracy"] = metrics["accuracy"]
    show(summary, args.json, f"saved {args.out}  student {line}")
    return EXIT_OK


def cmd_pretrain(args: argparse.Namespace) -> int:
    from condense.core.seed import seed_everything
    from condense.data.transfer import all_training_images
    from condense.models import build_model
    from condense.recipes.stages import model_kwargs_for
    from condense.ssl import PretrainConfig, pretrain_fit

    check_out_folder(args, args.out, resumable=args.resume and has_checkpoint(args.out))
    splits, data_name, data_kwargs = data_from(args)
    raw = yaml_mapping(args.config, "pretrain config")
    if args.method:
        raw["method"] = args.method
    raw["train"] = train_overrides(raw, args)
    cfg = PretrainConfig.from_dict(raw, where=args.config or "condense pretrain")
    seed_everything(cfg.train.seed)
    model = build_model(args.model, **model_kwargs_for(splits, kv(args.model_arg, "--model-arg"), args.model))
    result = pretrain_fit(model, all_training_images(splits), cfg, resume=args.resume)
    on_main(lambda: save_artifact(result.model, args.out, metrics={"fit": result.to_dict()},
                                  extra={"data": {"name": data_name, "kwargs": data_kwargs},
                                         "pretrain_config": cfg.to_dict()}))
    last = result.history[-1] if result.history else {}
    show({"artifact": args.out, "final_train_loss": last.get("train_loss")}, args.json,
           f"saved {args.out} (self-supervised {cfg.method}; final loss {last.get('train_loss', float('nan')):.4f}); "
           "fine-tune it on labelled data next: condense train --set ... or a finetune recipe stage")
    return EXIT_OK


def cmd_reduce(args: argparse.Namespace) -> int:
    from condense.core.io import write_json_strict
    from condense.reduce import reduce_data

    check_out_folder(args, args.out)
    model, meta = (None, None)
    if args.model:
        model, meta = load_model_arg(args.model, args.trust_pickle, trust_code=args.trust_code)
    splits, data_name, data_kwargs = data_from(args, meta)
    raw = {**yaml_mapping(args.config, "reduce config"), **kv(args.set, "--set")}
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
    write_json_strict(out / "reduce.json", summary)
    show(summary, args.json, f"{result.method}: {splits.summary()['train']} train samples x {splits.input_shape} -> "
           f"{result.data.summary()['train']} x {result.data.input_shape}; wrote {out / 'reduce.json'}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `condense` subcommands."""
    sp = sub.add_parser("train", help="train a zoo model on a dataset and save the artifact")
    sp.add_argument("--model", default="cnn", help="zoo name or package.module:factory")
    sp.add_argument("--model-arg", action="append", metavar="K=V", help="model option, e.g. width=16 (repeatable)")
    add_data_opts(sp, "digits")
    sp.add_argument("--epochs", type=int, default=None,
                    help="default: 10 epochs, at least 500 optimizer steps (TrainConfig's min_steps)")
    sp.add_argument("--lr", type=float, default=3e-3)
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--optimizer", default="adamw")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--set", action="append", metavar="K=V", help="any other TrainConfig field, e.g. schedule=step")
    sp.add_argument("--augment", action="append", metavar="K=V", help="augmentation, e.g. shift=1 or noise=0.05")
    sp.add_argument("--out", required=True, help="artifact folder to write (new or empty; see --force)")
    sp.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    add_force_opt(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("distill", help="distill one or more teacher artifacts into a new student")
    sp.add_argument("--teacher", action="append", required=True, help="teacher artifact folder or hf:<folder> (repeat for multi-teacher)")
    sp.add_argument("--trust-pickle", action="store_true")
    add_trust_code_opt(sp)
    sp.add_argument("--student", default=None, help="student: zoo name, package.module:factory or hf:<folder> "
                    "(default: cnn, or the teacher's own folder for an hf: teacher)")
    sp.add_argument("--student-layers", default=None, type=layers_arg, metavar="N|I,J,K",
                    help="hf: student keeps N evenly spread layers of its folder, or the listed ones (0-based)")
    sp.add_argument("--student-arg", action="append", metavar="K=V", help="student option, e.g. width=8")
    add_data_opts(sp)
    sp.add_argument("--config", help="YAML file with DistillConfig fields (losses, alpha, temperature, teacher_mix, train: ...)")
    sp.add_argument("--alpha", type=float, default=None, help="weight of the teacher's signal (1 = label-free)")
    sp.add_argument("--temperature", type=float, default=None)
    sp.add_argument("--epochs", type=int, default=None, help="default: 10 epochs, at least 500 optimizer steps (10 epochs for a Hugging Face teacher)")
    sp.add_argument("--lr", type=float, default=None,
                    help="default 1e-2 after a 20-step warm-up (DistillConfig's; 1e-4 for a Hugging Face teacher)")
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--transfer", choices=["train", "train+unlabelled"], default="train",
                    help="transfer set: labelled train split, or also the unlabelled part (needs alpha 1)")
    sp.add_argument("--out", required=True, help="artifact folder to write (new or empty; see --force)")
    sp.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    add_force_opt(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_distill)

    sp = sub.add_parser("pretrain", help="self-supervised pretraining on every training image (no labels read)")
    sp.add_argument("--model", default="cnn")
    sp.add_argument("--model-arg", action="append", metavar="K=V")
    add_data_opts(sp, "digits")
    sp.add_argument("--method", choices=["simclr", "byol", "mae"], default=None)
    sp.add_argument("--config", help="YAML file with PretrainConfig fields")
    sp.add_argument("--epochs", type=int, default=None)
    sp.add_argument("--lr", type=float, default=None)
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--out", required=True, help="artifact folder to write (new or empty; see --force)")
    sp.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    add_force_opt(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_pretrain)

    sp = sub.add_parser("reduce", help="reduce data: PCA / feature selection of inputs, or a coreset of samples")
    sp.add_argument("--model", default=None, help="artifact whose embeddings drive a coreset (optional)")
    sp.add_argument("--trust-pickle", action="store_true")
    add_trust_code_opt(sp)
    add_data_opts(sp, "digits")
    sp.add_argument("--method", choices=["pca", "select", "coreset"], default=None)
    sp.add_argument("--config", help="YAML file with the method's fields")
    sp.add_argument("--set", action="append", metavar="K=V", help="method option, e.g. n_components=8 or fraction=0.25")
    sp.add_argument("--out", required=True, help="folder for reduce.json (+ transform.json); new or empty, see --force")
    add_force_opt(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_reduce)
