"""`condense prune` and `condense sensitivity`: pruning from the command line.

Wired into the main parser by `condense.cli.prune.register(sub)` in `condense.cli.build_parser`.
Both commands follow the CLI's conventions: an artifact folder in, `--json` for machine-readable
output, exit codes from the `CondenseError` subclasses (2 bad config, 3 bad input file, 4 run failure).

    condense prune runs/teacher --method channel --target-macs 0.25 --round-to 8 --recover distill --out runs/pruned
    condense prune hf:models/all-MiniLM-L6-v2 --heads 0.3 --ffn 0.25 --data text:sentences.jsonl --out runs/minilm-pruned
    condense sensitivity runs/teacher --ratios 0.1 0.3 0.5 0.7 0.9 --budget macs --target 0.5
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
from pathlib import Path
from typing import Any

#: command-line option -> the config field it sets (only passed when given).
_PRUNE_OPTIONS = {"ratio": "ratio", "scope": "scope", "importance": "importance", "round_to": "round_to",
                  "heads": "heads", "ffn": "ffn"}


def _method(args: argparse.Namespace) -> str:
    """--method, else "transformer" when --heads / --ffn are given, else "channel"."""
    if args.method is not None:
        return str(args.method)
    return "transformer" if args.heads is not None or args.ffn is not None else "channel"


def _prune_config(args: argparse.Namespace) -> Any:
    """Build the method's config from the options the user gave; an option the method does not
    take (e.g. --importance with magnitude) is a ConfigError naming it."""
    from condense.cli.common import kv
    from condense.core.errors import ConfigError
    from condense.prune.config import PRUNERS, PruneConfig

    method = _method(args)
    fields = {f.name for f in dataclasses.fields(PRUNERS.get(method).config)}
    raw: dict[str, Any] = {"method": method}
    for opt, field in _PRUNE_OPTIONS.items():
        value = getattr(args, opt)
        if value is None:
            continue
        if field not in fields:
            raise ConfigError(f"--{opt.replace('_', '-')} does not apply to method {method!r} (its options: {', '.join(sorted(fields - {'method'}))})")
        raw[field] = value
    raw.update(kv(args.set, "--set"))
    return PruneConfig.from_dict(raw, where="condense prune")


def _report(model: Any, example: Any, reference: Any) -> dict[str, Any]:
    """pruning_report, with the MACs of a model called with dict batches (hf: encoders) added."""
    from condense.prune.report import pruning_report

    if not isinstance(example, dict):
        return pruning_report(model, example, reference=reference)
    from condense.prune.transformer import batch_macs

    report = pruning_report(model, None, reference=reference)
    report["model"]["macs"], report["reference"]["macs"] = batch_macs(model, example), batch_macs(reference, example)
    report["ratio"]["macs"] = report["model"]["macs"] / max(report["reference"]["macs"], 1)
    return report


def cmd_prune(args: argparse.Namespace) -> int:
    from condense.cli.common import (
        EXIT_OK,
        check_out_folder,
        data_from,
        heldout_metrics,
        hf_folder_of,
        model_from_args,
        save_artifact,
        show,
    )
    from condense.core.errors import ConfigError
    from condense.core.seed import seed_everything
    from condense.data.loader import example_inputs
    from condense.models.edits import edit_report
    from condense.prune.recover import RecoverConfig, prune_and_recover

    check_out_folder(args, args.out)
    pcfg = _prune_config(args)
    if args.target_macs is not None and args.ratio is not None:
        raise ConfigError("give --ratio or --target-macs, not both (--target-macs chooses the ratio)")
    model, meta = model_from_args(args, need_spec=True)
    splits, data_name, data_kwargs = data_from(args, meta, tokenizer=hf_folder_of(args.model, model))
    train: dict[str, Any] = {"epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size, "select_best": "last",
                             "progress": "off" if args.json else "auto"}
    if args.lr is not None:
        train["lr"] = args.lr
    from condense.models.hf import is_causal_lm, is_encoder

    encoder = is_encoder(model)  # embeddings, not class scores
    rcfg = RecoverConfig.from_dict(
        {"method": args.recover or ("distill" if encoder or is_causal_lm(model) else "finetune"), "alpha": args.alpha,
         "temperature": args.temperature, "bn_batches": args.bn_batches, "train": train}, where="condense prune"
    )
    seed_everything(rcfg.train.seed)
    example = example_inputs(splits.test, 1)
    reference = copy.deepcopy(model)  # the unpruned model: the report's reference and the distillation teacher
    before = None if encoder else heldout_metrics(model, splits, None)[0]
    model, info = prune_and_recover(
        model, pcfg, rcfg, splits.train, splits.val, example, args.targets, args.ignore,
        target_macs=args.target_macs, teacher=reference if rcfg.method == "distill" else None,
    )
    after, line = heldout_metrics(model, splits, reference)
    report = _report(model, example, reference)
    if getattr(getattr(model, "hf", None), "config", None) is not None and getattr(model.hf.config, "pruned_heads", None):
        report["notes"].append("attention heads were removed: condense.load opens this folder, transformers 5 does not "
                               "(no per-layer head count in its BERT config); condense.prune.pad_pruned_heads(model) "
                               "gives a copy it opens, with full-size attention")
    save_artifact(model, args.out, metrics={"test": after, "test_before": before, "prune": info, "report": report},
                  extra={"data": {"name": data_name, "kwargs": data_kwargs}, "prune_config": info["prune"],
                         "recover_config": rcfg.to_dict(), "source": str(args.model)})
    summary = {
        "artifact": str(args.out), "method": pcfg.method, "channel_ratio": info.get("channel_ratio"),
        "test_accuracy_before": before.get("accuracy") if before else None, "test_accuracy": after.get("accuracy"),
        "test_mean_cosine": after.get("reference", {}).get("mean_cosine") if encoder else None,
        "test_perplexity": after.get("perplexity"),
        "val_accuracy": info["val"], "params": report["model"]["params"],
        "params_before": report["reference"]["params"], "macs": report["model"]["macs"],
        "macs_before": report["reference"]["macs"], "macs_fraction": info["macs_fraction"],
        "bytes_on_disk": report["model"]["bytes_on_disk"], "bytes_before": report["reference"]["bytes_on_disk"],
        "sparsity": report["sparsity"], "notes": report["notes"],
    }
    if "compressed_size_estimate" in report:
        summary["compressed_size_estimate"] = report["compressed_size_estimate"]
    if pcfg.method == "transformer":
        from condense.prune.transformer import head_counts

        with contextlib.suppress(ConfigError):  # BERT-style blocks only; other families went through the engine
            summary["heads_per_layer"] = head_counts(model)
            summary["intermediate_size"] = int(model.hf.config.intermediate_size)
    vocab = edit_report(model, "vocab")
    if vocab is not None:
        summary["vocabulary"] = vocab
    text = (
        f"saved {args.out}  ({pcfg.method}, recover {rcfg.method})\n"
        + (f"vocabulary: kept {vocab['kept']:,} of {vocab['vocab_size']:,} tokens "
           f"({vocab['distinct_tokens_seen']:,} seen in {vocab['tokens_read']:,} training tokens)\n" if vocab else "")
        + (f"test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}\n" if before and "accuracy" in before
           else f"before pruning: test perplexity {before['perplexity']:.3f}; after: {line}\n"
           if before and "perplexity" in before else f"{line}\n")
        + (f"heads per layer {summary['heads_per_layer']}, FFN width {summary['intermediate_size']}\n"
           if "heads_per_layer" in summary else "")
        + f"params {summary['params_before']:,} -> {summary['params']:,}   MACs {summary['macs_before']:,} -> {summary['macs']:,} "
        f"({summary['macs_fraction']:.1%})   bytes {summary['bytes_before']:,} -> {summary['bytes_on_disk']:,}"
        + (f"\nsparsity {summary['sparsity']:.1%}" if summary["sparsity"] > 0.01 else "")
        + "".join(f"\nnote: {n}" for n in report["notes"])
    )
    show(summary, args.json, text)
    return EXIT_OK


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from condense.cli.common import EXIT_OK, check_out_file, data_from, model_from_args, show
    from condense.core.io import write_json_strict
    from condense.data.loader import example_inputs
    from condense.evaluate import evaluate
    from condense.prune.sensitivity import allocate_ratios, estimate_cost, layer_sensitivity

    if args.out:
        check_out_file(args, args.out)
    model, meta = model_from_args(args)
    splits, _, _ = data_from(args, meta)
    data = getattr(splits, args.split)
    budget = args.budget or ("params" if args.method == "magnitude" else "macs")

    def metric(m: Any) -> float:
        return float(evaluate(m, data)["accuracy"])

    table = layer_sensitivity(
        model, metric, ratios=args.ratios, method=args.method, example_inputs=example_inputs(splits.test, 1),
        importance=args.importance, round_to=args.round_to, targets=args.targets, ignore=args.ignore,
    )
    out: dict[str, Any] = {"split": args.split, "table": {k: v for k, v in table.items() if k != "layers"}}
    if args.target is not None:
        ratios = allocate_ratios(table, args.target, budget)
        base = table["macs"] if budget == "macs" else table["params"]
        est = estimate_cost(table, ratios, budget)
        out["allocation"] = {"target": args.target, "budget": budget, "ratios": ratios,
                             "estimated": est, "estimated_fraction_kept": est / max(base, 1)}
    if args.out:
        write_json_strict(Path(args.out), {**out, "table": table})
    show(out, args.json, _sensitivity_text(table, out, args.split))
    return EXIT_OK


def _sensitivity_text(table: dict[str, Any], out: dict[str, Any], split: str) -> str:
    ratios = table["ratios"]
    width = max([len("layer / group")] + [len(e["name"]) for e in table["entries"]])
    head = f"{'layer / group':{width}s}  {'size':>7s}  " + "  ".join(f"r={r:<5g}" for r in ratios)
    lines = [f"{split} accuracy vs pruning ratio ({table['method']}; unpruned {table['baseline']:.4f})", head, "-" * len(head)]
    for e in table["entries"]:
        lines.append(f"{e['name']:{width}s}  {e['size']:>7d}  " + "  ".join(f"{m:7.4f}" for m in e["metric"]))
    alloc = out.get("allocation")
    if alloc:
        lines.append("")
        lines.append(f"allocation removing >= {alloc['target']:.0%} of the {alloc['budget']} "
                     f"(estimated {alloc['estimated']:,} kept, {alloc['estimated_fraction_kept']:.1%}):")
        lines += [f"  {name:{width}s}  ratio {r:g}" for name, r in alloc["ratios"].items()]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `prune` and `sensitivity` to the `condense` subcommands (imports nothing heavy itself)."""
    from condense.cli.common import add_arch_opts, add_data_opts, add_force_opt, add_model_opts

    def common(sp: argparse.ArgumentParser) -> None:
        add_model_opts(sp)
        add_arch_opts(sp)
        add_data_opts(sp)
        sp.add_argument("--targets", nargs="+", default=None, help="layers to prune: names, re:<regex> or types (Conv2d, Linear)")
        sp.add_argument("--ignore", nargs="+", default=None, help="layers to leave alone (same language as --targets)")
        sp.add_argument("--json", action="store_true")

    sp = sub.add_parser("prune", help="prune an artifact (masks or physical channel removal) and recover its accuracy")
    common(sp)
    sp.add_argument("--method", default=None,
                    help="channel | slimming | magnitude | random | nm | transformer | vocab (default: transformer "
                         "when --heads / --ffn are given, else channel)")
    sp.add_argument("--ratio", type=float, default=None, help="fraction removed (channels, or weights for masks)")
    sp.add_argument("--target-macs", type=float, default=None,
                    help="fraction of the original MACs to KEEP (0.25 = remove 75%%); chooses the channel ratio")
    sp.add_argument("--scope", choices=["layer", "global"], default=None)
    sp.add_argument("--heads", type=float, default=None,
                    help="transformer: fraction of attention heads removed (BERT-family hf: encoders)")
    sp.add_argument("--ffn", type=float, default=None, help="transformer: fraction of FFN neurons removed (every layer alike)")
    sp.add_argument("--importance", default=None,
                    help="channel: a registered scorer (l1 | l2 | bn_gamma | taylor | gradient | random | fpgm | ...; "
                         "an unknown name lists them); transformer: gradient | taylor | activation | weight")
    sp.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this (e.g. 8)")
    sp.add_argument("--set", action="append", metavar="K=V", help="any other field of the method's config, e.g. n=2 m=4")
    sp.add_argument("--recover", choices=["finetune", "distill", "none"], default=None,
                    help="finetune on labels, distill from the unpruned model, or none (default: distill for "
                         "hf: encoders, finetune otherwise)")
    sp.add_argument("--epochs", type=int, default=None,
                    help="recovery epochs (default: 5, at least 500 optimizer steps)")
    sp.add_argument("--lr", type=float, default=None, help="recovery learning rate (default 1e-3)")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--alpha", type=float, default=0.9, help="distill: weight of the teacher's soft targets")
    sp.add_argument("--temperature", type=float, default=4.0, help="distill: softmax temperature")
    sp.add_argument("--bn-batches", type=int, default=8, help="re-estimate BatchNorm statistics on this many batches first (0: off)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, help="artifact folder to write (new or empty; see --force)")
    add_force_opt(sp)
    sp.set_defaults(fn=cmd_prune)

    sp = sub.add_parser("sensitivity", help="accuracy vs pruning ratio per layer, and a per-layer ratio allocation")
    common(sp)
    sp.add_argument("--method", choices=["channel", "magnitude"], default="channel")
    sp.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    sp.add_argument("--importance", default="l1", help="channel scorer (l1 | l2 | bn_gamma | random | fpgm | ...)")
    sp.add_argument("--round-to", type=int, default=1)
    sp.add_argument("--split", choices=["val", "train", "test"], default="val",
                    help="split the accuracy is measured on (default val: keep test data for the final number)")
    sp.add_argument("--budget", choices=["macs", "params"], default=None, help="default: macs (channel), params (magnitude)")
    sp.add_argument("--target", type=float, default=0.5, help="fraction of the budget to remove in the allocation")
    sp.add_argument("--out", default=None, help="also write the full table (with the cost model) to this JSON file")
    add_force_opt(sp, "an existing --out file")
    sp.set_defaults(fn=cmd_sensitivity)
