"""`condense apply KIND MODEL`: run any stage kind's method record on one model, from the command
line, through the same `Job` the recipe runner builds; a new stage kind (one file, one `Method`
record) is usable here with nothing added to the CLI.

    condense apply prune runs/teacher --set method=channel --set ratio=0.5 --recover method=distill \\
        --train epochs=3 --out runs/pruned
    condense apply quantize runs/student --config int8.yaml --out runs/int8
    condense recipe kinds        # the kinds, and which of --train / --recover / --teacher each takes

The model is saved as an artifact in --out with the method's `info` in its metrics; a record that
deploys int8 also writes `model.int8.onnx` there.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from condense.cli.common import add_data_opts, add_force_opt, add_model_opts


def cmd_apply(args: argparse.Namespace) -> int:
    from condense.cli.common import (
        EXIT_OK,
        check_out_folder,
        data_from,
        has_checkpoint,
        heldout_metrics,
        hf_folder_of,
        kv,
        load_model_arg,
        model_from_args,
        save_artifact,
        show,
        yaml_mapping,
    )
    from condense.core.errors import ConfigError
    from condense.core.method import METHODS, Job, jsonable
    from condense.core.seed import seed_everything
    from condense.data.loader import example_inputs, heldout_inputs
    from condense.export.formats import deploy_precision
    from condense.train.config import TrainConfig
    from condense.train.recover import RecoverConfig

    record = METHODS.get(args.kind)
    where = f"condense apply {args.kind}"
    if args.recover and not record.edits_structure:
        raise ConfigError(f"{where}: --recover is for the kinds that edit structure "
                          f"({', '.join(n for n in METHODS.names() if METHODS.get(n).edits_structure)})")
    if args.train and not (record.trains or record.trains_when is not None):
        raise ConfigError(f"{where}: this kind does not train; remove --train")
    check_out_folder(args, args.out, resumable=args.resume and has_checkpoint(args.out))
    model, meta = model_from_args(args, need_spec=True)
    splits, data_name, data_kwargs = data_from(args, meta, tokenizer=hf_folder_of(args.model, model))
    config = record.parse({**yaml_mapping(args.config, f"{args.kind} config"), **kv(args.set, "--set")})
    if args.train and not record.trains_for(config):
        raise ConfigError(f"{where}: this kind does not train with this config; remove --train")
    train_raw = {"progress": "off" if args.json else "auto", **kv(args.train, "--train"),
                 "checkpoint_dir": str(Path(args.out) / "checkpoint")}
    seed_everything(int(train_raw.get("seed", 0)))

    def train(defaults: dict[str, Any] | None = None) -> TrainConfig:
        return TrainConfig.from_dict({**(defaults or {}), **train_raw}, where=f"{where} --train")

    recover = None
    if record.edits_structure:
        raw = {"method": "finetune", **kv(args.recover, "--recover")}
        if raw["method"] != "none":
            raw["train"] = train(None).to_dict()
        recover = RecoverConfig.from_dict(raw, where=f"{where} --recover")
    teachers = [load_model_arg(t, args.trust_pickle, trust_code=args.trust_code)[0] for t in args.teacher or []]
    job = Job(model=model, config=config, splits=splits, folder=Path(args.out), train=train, teachers=teachers,
              recover=recover, resume=args.resume, train_section=kv(args.train, "--train"), where=where)
    reference = copy.deepcopy(model)
    out = record.apply(job)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    files = []
    if record.deploys == "auto" and deploy_precision(out.model) == "int8":
        from condense.quantize import export_int8_onnx

        res = export_int8_onnx(out.model, example_inputs(splits.test, 1), Path(args.out) / "model.int8.onnx",
                               heldout=heldout_inputs(splits.test), reference=reference)
        files.append(str(res.path))
        out.notes.extend(res.notes)
    metrics, line = heldout_metrics(out.model, splits, reference)
    save_artifact(out.model, args.out, metrics={"test": metrics, args.kind: jsonable(out.info)},
                  extra={"data": {"name": data_name, "kwargs": data_kwargs}, f"{args.kind}_config": config.to_dict(),
                         "source": str(args.model), "kind": args.kind})
    summary = {"artifact": str(args.out), "kind": args.kind, "test": jsonable(metrics), "files": files,
               "notes": out.notes, "info": jsonable(out.info)}
    show(summary, args.json, f"{args.kind}: {line}; saved {args.out}" + "".join(f"\n  note: {n}" for n in out.notes))
    return EXIT_OK


def register(sub: Any) -> None:
    sp = sub.add_parser("apply", help="run any stage kind (`condense recipe kinds`) on one model and save the result")
    sp.add_argument("kind", help="a stage kind: see `condense recipe kinds`")
    add_model_opts(sp)
    add_data_opts(sp)
    sp.add_argument("--config", help="YAML file with the kind's config fields")
    sp.add_argument("--set", action="append", metavar="K=V", help="a config field (wins over --config; repeatable)")
    sp.add_argument("--train", action="append", metavar="K=V", help="a TrainConfig field of a kind that trains")
    sp.add_argument("--recover", action="append", metavar="K=V",
                    help="a RecoverConfig field of a kind that edits structure, e.g. method=distill (default finetune)")
    sp.add_argument("--teacher", action="append", metavar="MODEL", help="a teacher (distill; repeatable)")
    sp.add_argument("--out", required=True, help="artifact folder to write")
    sp.add_argument("--resume", action="store_true", help="continue the training in --out from its checkpoint")
    sp.add_argument("--json", action="store_true")
    add_force_opt(sp)
    sp.set_defaults(fn=cmd_apply)
