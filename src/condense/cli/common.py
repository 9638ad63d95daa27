"""What every `condense` command shares: exit codes, `key=value` and YAML options, printing
(strict JSON), loading the model and data a command names, the common argument groups, and the
one rule for output folders and files (`check_out_folder`, `check_out_file`, `--force`).

Command modules (`condense.cli.train`, `...measure`, `...run`, and the method packages' own
`prune.cli`, `quantize.cli`, `lowrank.cli`) import from here; this module imports no command
module, so there is no cycle.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_RUN, EXIT_INTERRUPTED = 0, 2, 3, 4, 130
EXIT_TERMINATED = 143  # SIGTERM: `condense.train.signals.Interrupted` carries 128 + the signal number


def on_main(fn: Any) -> Any:
    """`fn()` on rank 0 only under torchrun (its result on every rank); `fn()` in a plain run."""
    from condense.train.distributed import on_main as _on_main

    return _on_main(fn)


def kv(items: Sequence[str] | None, field: str) -> dict[str, Any]:
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


def show(obj: Any, as_json: bool, text: str | None = None) -> None:
    """Print a command's result: strict JSON with `--json` (NaN / inf as null, with a warning), else `text`."""
    from condense.core.jsonio import dumps_strict
    from condense.train.distributed import is_main

    if not is_main():  # under torchrun, rank 0 speaks for the run
        return
    if as_json or text is None:
        sys.stdout.write(dumps_strict(obj, default=str, what="output", indent=2) + "\n")
    else:
        print(text)


# -- output folders and files: one rule for every command that writes ---------------------------------

#: the file an unexpected error's traceback goes to, in the command's output folder (see `condense.cli.main`)
ERROR_LOG = "condense-error.log"


def add_force_opt(sp: argparse.ArgumentParser, what: str = "a non-empty --out folder") -> None:
    """`--force`: write into `what` (a non-empty output folder, an existing output file)."""
    sp.add_argument("--force", action="store_true",
                    help=f"write into {what}: only the files this command writes are replaced, anything else there "
                         "is kept (without it, such an output is refused with exit 2)")


def _check_parents(p: Path, flag: str) -> None:
    from condense.core.errors import ConfigError

    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{p}: {parent} is a file, not a folder; choose another {flag} (nothing was changed)")
            return


def check_out_folder(args: argparse.Namespace, path: str | Path, *, resumable: bool = False,
                     flag: str = "--out") -> Path:
    """The rule of every command that writes an output folder, checked before any work.

    `path` must not be a file. An existing folder must be empty, or be this command's own
    resumable output (`resumable`, e.g. `train --resume` on its own checkpoint), or the user
    passes `--force`: the command then replaces only the files it writes and keeps everything else
    (no folder is ever emptied). Anything else is a ConfigError (exit 2) naming the folder and
    `--force`. The folder is recorded on `args.output_folder`, where the top-level handler writes
    the traceback of an unexpected error (`ERROR_LOG`).
    """
    from condense.core.errors import ConfigError

    p = Path(path)
    _check_parents(p, flag)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{p}: exists and is not a folder; {flag} names the folder to write into (nothing was changed)")
    if p.is_dir() and not resumable and not getattr(args, "force", False):
        entries = sorted(e.name for e in p.iterdir() if e.name != ERROR_LOG)
        if entries:
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
            raise ConfigError(
                f"{p}: the folder exists and is not empty (it holds {shown}); condense {args.command} writes into "
                f"a non-empty folder only with --force, which replaces the files it writes and keeps the others; "
                f"or choose another {flag} (nothing was changed)")
    args.output_folder = p
    return p


def check_out_file(args: argparse.Namespace, path: str | Path, *, flag: str = "--out") -> Path:
    """The same rule for a command that writes one file: `path` must not be a folder, and an
    existing file is replaced only with `--force` (ConfigError, exit 2, otherwise)."""
    from condense.core.errors import ConfigError

    p = Path(path)
    _check_parents(p, flag)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder; {flag} names the file to write (nothing was changed)")
    if (p.exists() or p.is_symlink()) and not getattr(args, "force", False):
        raise ConfigError(f"{p}: exists; condense {args.command} replaces an existing file only with --force, "
                          f"or choose another {flag} (nothing was changed)")
    return p


def has_checkpoint(out: str | Path) -> bool:
    """Whether `out` holds the training checkpoint a `--resume` continues (`<out>/checkpoint`)."""
    from condense.train.checkpoint import CHECKPOINT_NAME

    return (Path(out) / "checkpoint" / CHECKPOINT_NAME).is_file()


def save_artifact(model: Any, out: str | Path, *, metrics: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None) -> Path:
    """`condense.artifacts.save` with strict-JSON metadata: a NaN / inf metric is written as null
    (with a warning naming it), never as the `NaN` token strict JSON parsers reject."""
    from condense.artifacts import save
    from condense.core.jsonio import strict_data

    where = f"{Path(out) / 'condense.json'}"
    return save(model, out, metrics=strict_data(metrics or {}, what=where),
                extra=strict_data(extra, what=where) if extra is not None else None)


#: `--data NAME:VALUE` shorthands: the option VALUE fills (`text:notes.jsonl`, `imagefolder:photos/`)
DATA_SHORTHAND = {"text": "path", "csv": "path", "jsonl": "path", "imagefolder": "root", "cifar10": "root",
                  "mnist": "root"}


def data_from(args: argparse.Namespace, meta: dict[str, Any] | None = None, tokenizer: str | None = None,
              *, required: bool = False):
    """(splits, name, kwargs) from --data / --data-arg, else the artifact's own data, else digits.
    `text` data without a tokenizer= option uses `tokenizer` (the folder of the hf: model being
    compressed). `required`: no digits fallback (a ConfigError naming --data instead), for
    commands whose numbers are only meaningful on the model's own data (eval)."""
    from condense.core.errors import ConfigError
    from condense.data import load_dataset

    name = args.data
    kwargs = kv(args.data_arg, "--data-arg")
    if name and ":" in name and name.split(":", 1)[0] in DATA_SHORTHAND:
        name, value = name.split(":", 1)
        kwargs = {DATA_SHORTHAND[name]: value, **kwargs}
    if name is None and meta and meta.get("data"):
        name = meta["data"]["name"]
        kwargs = {**meta["data"].get("kwargs", {}), **kwargs}
    if name is None and required:
        where = "this model's metadata records no dataset" if meta else "this model carries no record of its dataset"
        raise ConfigError(f"{args.model}: {where}; name the data to use with --data NAME [--data-arg K=V] "
                          "(see `condense datasets`)")
    if name in ("text", "stdlib-text") and "tokenizer" not in kwargs and tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    return load_dataset(name or "digits", **kwargs), name or "digits", kwargs


def layers_arg(text: str) -> int | list[int]:
    try:
        return int(text) if "," not in text else [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer count (3) or a list (0,2,4), got {text!r}") from None


def hf_folder_of(arg: str, model: Any) -> str | None:
    """The folder holding an hf: model's tokenizer: the hf: folder itself, or the saved artifact."""
    from condense.models.hf import HFModel

    if not isinstance(model, HFModel):
        return None
    return arg[3:] if arg.startswith("hf:") else arg


def heldout_metrics(model: Any, splits: Any, reference: Any | None) -> tuple[dict[str, Any], str]:
    """Test metrics and a one-line summary: accuracy on labelled classification data, perplexity
    (and token agreement with `reference`) for a decoder, else (an encoder on unlabelled text) how
    closely the outputs follow `reference` (the teacher)."""
    from condense.core.errors import ConfigError
    from condense.evaluate import evaluate
    from condense.evaluate.decoder import is_decoder
    from condense.models.hf import is_encoder

    if is_decoder(model):
        m = evaluate(model, splits.test, reference=reference)
        line = f"test perplexity {m['perplexity']:.4g}"
        if reference is not None:
            line += f", token agreement with the teacher {m['token_agreement']:.4f} (KL {m['token_kl']:.4g})"
        return m, line
    if not is_encoder(model):
        m = evaluate(model, splits.test)
        return m, f"test accuracy {m['accuracy']:.4f}"
    if reference is None:
        raise ConfigError("this model's outputs are not class scores; compare it with a reference model")
    m = evaluate(model, splits.test, reference=reference)
    r = m["reference"]
    return m, f"test mean cosine to the teacher {r['mean_cosine']:.4f} (min {r['min_cosine']:.4f})"


def load_model_arg(path: str, trust_pickle: bool, arch: str | None = None, arch_args: Sequence[str] | None = None,
                   *, need_spec: bool = False, trust_code: bool = False):
    """An artifact folder, a Hugging Face folder as `hf:<folder>`, or a `.pt` checkpoint ->
    (model, metadata or None).

    A `.pt` state_dict is loaded strictly into the architecture `arch` (`--model
    package.module:factory` or a zoo name) builds with `arch_args` (`--model-arg K=V`); a pickled
    whole model needs `trust_pickle`, and with `arch` gets that spec. `need_spec` (commands that
    save an artifact): a model without an architecture spec is refused before any work is done.
    `trust_code` (`--trust-code`): an artifact whose condense.json names a `package.module:factory`
    may import and run it (refused otherwise, exit 3; `--model` is the user's own choice).
    """
    from condense.artifacts import load, read_metadata
    from condense.core.errors import ConfigError
    from condense.models.registry import model_spec

    if arch_args and not arch:
        raise ConfigError("--model-arg needs --model package.module:factory (the architecture they build)")
    if path.startswith("hf:"):
        from condense.models import build_model

        if arch:
            raise ConfigError(f"{path}: a Hugging Face folder names its own architecture; --model is for a .pt checkpoint")
        return build_model(path), None
    p = Path(path)
    if p.is_dir():
        if arch:
            raise ConfigError(f"{p}: an artifact folder records its own architecture; --model is for a .pt checkpoint")
        meta = read_metadata(p)
        return load(p, trust_code=trust_code), meta
    spec = None
    if arch:
        from condense.models import ModelSpec

        spec = ModelSpec(arch, kv(arch_args, "--model-arg"))
    model = load(p, trust_pickle=trust_pickle, spec=spec)
    if need_spec and model_spec(model) is None:
        raise ConfigError(f"{p}: a pickled model carries no architecture spec, so the result could not be saved as a "
                          "condense artifact (safetensors + condense.json); name the code that builds it with "
                          "--model package.module:factory [--model-arg K=V]")
    return model, None


def model_from_args(args: argparse.Namespace, *, need_spec: bool = False):
    """`load_model_arg` with the command's MODEL, --trust-pickle, --trust-code, --model and --model-arg."""
    return load_model_arg(args.model, args.trust_pickle, getattr(args, "arch", None), getattr(args, "arch_arg", None),
                          need_spec=need_spec, trust_code=getattr(args, "trust_code", False))


def yaml_mapping(path: str | None, what: str) -> dict[str, Any]:
    """Read a YAML mapping with the recipes' safe reader (never executes anything; duplicate keys,
    alias bombs and undecodable bytes are refused)."""
    from condense.core.errors import ConfigError, InputFileError
    from condense.recipes.schema import read_yaml

    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such {what} file")
    data = read_yaml(p)[0] or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of {what} settings, got {type(data).__name__}")
    return data


def train_overrides(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The `train:` mapping of a method config, with --epochs / --lr / --seed and a checkpoint folder."""
    train = dict(raw.get("train") or {})
    for key, value in (("epochs", args.epochs), ("lr", args.lr), ("seed", args.seed)):
        if value is not None:
            train[key] = value
    train.setdefault("checkpoint_dir", str(Path(args.out) / "checkpoint"))
    return train


def add_data_opts(sp: argparse.ArgumentParser, default: str | None = None) -> None:
    sp.add_argument("--data", default=default, help="dataset name (see `condense datasets`); default: the model's own")
    sp.add_argument("--data-arg", action="append", metavar="K=V", help="dataset option, e.g. root=/data/cifar (repeatable)")


def add_trust_code_opt(sp: argparse.ArgumentParser) -> None:
    """`--trust-code` (once per command): a model spec read from a file (an artifact's condense.json,
    a recipe) may import and run the `package.module:factory` it names (docs/security.md)."""
    if "--trust-code" not in sp._option_string_actions:
        sp.add_argument("--trust-code", action="store_true",
                        help="allow an artifact or recipe to name a package.module:factory that condense imports and "
                             "runs (like a pickle: only for files you trust; docs/security.md). Needed to reopen a "
                             "model saved from --model package.module:factory")


def add_arch_opts(sp: argparse.ArgumentParser) -> None:
    """--model / --model-arg for a MODEL given as a .pt file (read by `model_from_args`), and
    --trust-code for an artifact MODEL that names its own factory."""
    add_trust_code_opt(sp)
    sp.add_argument("--model", dest="arch", default=None, metavar="PACKAGE.MODULE:FACTORY",
                    help="for a .pt MODEL: the code that builds its architecture (importable, e.g. on PYTHONPATH); a "
                         "state_dict is loaded into it strictly, a pickled model (--trust-pickle) gets it as its spec "
                         "so the result saves as a condense artifact")
    sp.add_argument("--model-arg", dest="arch_arg", action="append", metavar="K=V",
                    help="argument of the --model factory, e.g. width=16 (repeatable)")


def add_model_opts(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model", help="artifact folder written by condense, hf:<Hugging Face folder>, "
                                  "(or a .pt pickle with --trust-pickle)")
    sp.add_argument("--trust-pickle", action="store_true", help="allow loading a pickle checkpoint (runs code from the file)")
    add_trust_code_opt(sp)
