"""`condense factorize` and `condense reduce-depth`: low-rank factorization and layer removal
from the command line, with recovery (fine-tune or distill from the unedited model).

    condense factorize runs/teacher --rank-by params --ratio 0.5 --recover distill --out runs/lowrank
    condense factorize hf:models/all-MiniLM-L6-v2 --data text:sentences.jsonl --targets 're:encoder\\.layer' \
        --ratio 0.5 --out runs/minilm-lowrank
    condense reduce-depth runs/resnet --drop 2 --recover distill --out runs/shallow
"""
from __future__ import annotations

import argparse
import copy
from typing import Any

#: option -> FactorizeConfig field (passed only when given)
_FACTORIZE_OPTIONS = ("method", "conv", "rank_by", "energy", "ratio", "budget", "rank", "round_to", "targets",
                      "ignore", "calibration_batches", "check_latency")


def _recover_cfg(args: argparse.Namespace, encoder: bool) -> Any:
    from condense.train.recover import RecoverConfig

    train: dict[str, Any] = {"epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size, "select_best": "last",
                             "progress": "off" if args.json else "auto"}
    if args.lr is not None:
        train["lr"] = args.lr
    return RecoverConfig.from_dict(
        {"method": args.recover or ("distill" if encoder else "finetune"), "alpha": args.alpha,
         "temperature": args.temperature, "bn_batches": args.bn_batches, "train": train}, where=f"condense {args.command}")


def _run(args: argparse.Namespace, verb: str) -> int:
    from condense.cli.common import (
        EXIT_OK,
        check_out_folder,
        data_from,
        heldout_metrics,
        hf_folder_of,
        kv,
        model_from_args,
        save_artifact,
        show,
    )
    from condense.core.seed import seed_everything
    from condense.lowrank import (
        DepthConfig,
        FactorizeConfig,
        factorize_and_recover,
        reduce_depth_and_recover,
    )
    from condense.models.hf import is_encoder

    check_out_folder(args, args.out)
    model, meta = model_from_args(args, need_spec=True)
    splits, data_name, data_kwargs = data_from(args, meta, tokenizer=hf_folder_of(args.model, model))
    encoder = is_encoder(model)
    rcfg = _recover_cfg(args, encoder)
    seed_everything(rcfg.train.seed)
    reference = copy.deepcopy(model)
    before = None if encoder else heldout_metrics(model, splits, None)[0]
    if verb == "factorize":
        raw = {k: getattr(args, k) for k in _FACTORIZE_OPTIONS if getattr(args, k) not in (None, False)}
        raw.update(kv(args.set, "--set"))
        cfg: Any = FactorizeConfig.from_dict(raw, where="condense factorize")
        model, info = factorize_and_recover(model, cfg, rcfg, splits.train, splits.val,
                                            teacher=reference if rcfg.method == "distill" else None)
    else:
        raw = {"drop": args.drop, "blocks": args.blocks, "targets": args.targets, "ignore": args.ignore}
        cfg = DepthConfig.from_dict({k: v for k, v in raw.items() if v is not None}, where="condense reduce-depth")
        model, info = reduce_depth_and_recover(model, cfg, rcfg, splits.train, splits.val,
                                               teacher=reference if rcfg.method == "distill" else None)
    after, line = heldout_metrics(model, splits, reference)
    save_artifact(model, args.out, metrics={"test": after, "test_before": before, verb: info},
                  extra={"data": {"name": data_name, "kwargs": data_kwargs}, f"{verb}_config": cfg.to_dict(),
                         "recover_config": rcfg.to_dict(), "source": str(args.model)})
    edit = info.get("edit") or {}
    summary = {
        "artifact": str(args.out), "test_accuracy_before": before["accuracy"] if before else None,
        "test_accuracy": after.get("accuracy"), "test_mean_cosine": after["reference"]["mean_cosine"] if encoder else None,
        "val": info["val"], "params_before": info["before"]["params"], "params": info["recovered"]["params"],
        "macs_before": info["before"]["macs"], "macs": info["recovered"]["macs"],
        "params_fraction": info["params_fraction"], "macs_fraction": info["macs_fraction"],
    }
    if verb == "factorize":
        summary["ranks"] = {r["name"]: r["rank"] for r in edit.get("layers", []) if "rank" in r}
        summary["left_alone"] = edit.get("skipped", {})
    else:
        summary["dropped"] = edit.get("dropped")
        summary["metric_without"] = edit.get("metric_without")
    text = (
        f"saved {args.out}  ({verb}, recover {rcfg.method})\n"
        + (f"test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}\n" if before else f"{line}\n")
        + f"params {summary['params_before']:,} -> {summary['params']:,} ({summary['params_fraction']:.1%})   "
        f"MACs {summary['macs_before']:,} -> {summary['macs']:,} ({summary['macs_fraction']:.1%})"
        + ("".join(f"\n  {n}: rank {r}" for n, r in summary.get("ranks", {}).items()))
        + ("".join(f"\n  {n}: {why}" for n, why in summary.get("left_alone", {}).items()))
        + (f"\nremoved blocks: {', '.join(summary['dropped'])}" if summary.get("dropped") else "")
    )
    show(summary, args.json, text)
    return EXIT_OK


def cmd_factorize(args: argparse.Namespace) -> int:
    return _run(args, "factorize")


def cmd_reduce_depth(args: argparse.Namespace) -> int:
    return _run(args, "reduce-depth")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `factorize` and `reduce-depth` to the `condense` subcommands."""
    from condense.cli.common import add_arch_opts, add_data_opts, add_force_opt, add_model_opts

    def common(sp: argparse.ArgumentParser) -> None:
        add_model_opts(sp)
        add_arch_opts(sp)
        add_data_opts(sp)
        sp.add_argument("--targets", nargs="+", default=None, help="layers / blocks: names, re:<regex> or types")
        sp.add_argument("--ignore", nargs="+", default=None, help="layers / blocks to leave alone (same language)")
        sp.add_argument("--recover", choices=["finetune", "distill", "none"], default=None,
                        help="finetune on labels, distill from the unedited model, or none (default: distill for "
                             "hf: encoders, finetune otherwise)")
        sp.add_argument("--epochs", type=int, default=None,
                        help="recovery epochs (default: 5, at least 500 optimizer steps)")
        sp.add_argument("--lr", type=float, default=None, help="recovery learning rate (default 1e-3)")
        sp.add_argument("--batch-size", type=int, default=64)
        sp.add_argument("--alpha", type=float, default=0.9, help="distill: weight of the teacher's soft targets")
        sp.add_argument("--temperature", type=float, default=4.0, help="distill: softmax temperature")
        sp.add_argument("--bn-batches", type=int, default=8, help="re-estimate BatchNorm statistics on this many batches (0: off)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--out", required=True, help="artifact folder to write (new or empty; see --force)")
        add_force_opt(sp)
        sp.add_argument("--json", action="store_true")

    sp = sub.add_parser("factorize", help="replace Linear / Conv2d layers by low-rank products (SVD, Tucker-2) and recover")
    common(sp)
    sp.add_argument("--method", choices=["activation_svd", "svd"], default=None,
                    help="activation_svd (default): whitened by the input covariance; svd: weights only")
    sp.add_argument("--conv", choices=["tucker2", "channel", "spatial", "none"], default=None, help="form of k x k convs")
    sp.add_argument("--rank-by", choices=["energy", "params", "macs", "sensitivity"], default=None,
                    help="energy (default): per layer; params / macs: global budget; sensitivity: measured per layer")
    sp.add_argument("--energy", type=float, default=None, help="fraction of spectral energy kept (rank-by energy)")
    sp.add_argument("--ratio", type=float, default=None, help="fraction of the selected layers' params / MACs removed")
    sp.add_argument("--budget", choices=["params", "macs"], default=None, help="budget of rank-by sensitivity")
    sp.add_argument("--rank", type=int, default=None, help="one rank for every selected layer")
    sp.add_argument("--round-to", type=int, default=None, help="ranks are multiples of this (default 8)")
    sp.add_argument("--calibration-batches", type=int, default=None)
    sp.add_argument("--check-latency", action="store_true", help="time each replacement; keep the layer when slower")
    sp.add_argument("--set", action="append", metavar="K=V", help="any other FactorizeConfig field")
    sp.set_defaults(fn=cmd_factorize)

    sp = sub.add_parser("reduce-depth", help="remove whole residual blocks / transformer layers and recover")
    common(sp)
    sp.add_argument("--drop", type=int, default=None, help="how many blocks to remove (least important, measured)")
    sp.add_argument("--blocks", nargs="+", default=None, help="remove exactly these blocks (module names)")
    sp.set_defaults(fn=cmd_reduce_depth)
