"""Recipe validation: every check a recipe gets before anything runs, with file:line errors.

`validate_recipe` checks the data options, the measure section and each stage's model arguments,
then parses every stage's `config:` (and `train:` / `recover:`) with its kind's config class;
an error names the file and the line of the key it is about, with a did-you-mean where a name is
close to a known one.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from condense.core.config import Config
from condense.core.errors import ConfigError, did_you_mean
from condense.data import DATASETS, check_dataset_options
from condense.models.registry import check_model_args, require_trusted
from condense.recipes.measure import MeasureConfig
from condense.recipes.schema import Recipe, YamlLines
from condense.recipes.stages import FROM_TEACHER, PLANNED, STAGES
from condense.train.config import TrainConfig
from condense.train.recover import RecoverConfig


def _line_of_error(lines: YamlLines, path: tuple[str | int, ...], data: Any, message: str) -> int:
    """The line of the deepest key under `path` that `message` names in quotes (else `path`'s line)."""
    best = lines.line(*path)
    if isinstance(data, dict):
        for key, value in data.items():
            if f"'{key}'" in message or f".{key}:" in message or f".{key} " in message:
                best = lines.line(*path, key)
            deeper = _line_of_error(lines, (*path, key), value, message) if isinstance(value, dict) else None
            if deeper is not None and deeper != lines.line(*path, key):
                best = deeper
    return best


def _parse_at(parse: Callable[[dict[str, Any]], Config], raw: dict[str, Any], recipe: Recipe,
              path: tuple[str | int, ...]) -> Config:
    """Run a parser; prefix its ConfigError with file:line of the key it names."""
    lines: YamlLines = recipe._lines  # type: ignore[attr-defined]
    try:
        return parse(raw)
    except ConfigError as e:
        raise ConfigError(f"{recipe.path}:{_line_of_error(lines, path, raw, str(e))}: {e}") from None


def parse_stage_config(recipe: Recipe, i: int) -> Config:
    """Parse stage `i`'s `config:` into its kind's config object (errors carry file:line)."""
    spec = recipe.stages[i]
    lines: YamlLines = recipe._lines  # type: ignore[attr-defined]
    where = recipe.path
    if spec.kind in PLANNED:
        raise ConfigError(f"{where}:{spec.line}: stage kind {spec.kind!r} is not available: {PLANNED[spec.kind]}")
    if spec.kind not in STAGES:
        known = sorted([*STAGES.names(), *PLANNED])
        raise ConfigError(f"{where}:{spec.line}: unknown stage kind {spec.kind!r}{did_you_mean(spec.kind, known)}; "
                          f"known: {', '.join(known)}")
    kind = STAGES.get(spec.kind)
    if (kind.trains or kind.trains_when is not None) and "train" in spec.config:
        raise ConfigError(f"{where}:{lines.line('stages', i, 'config', 'train')}: put training settings in the "
                          "stage's 'train:', not in 'config:'")
    cfg = _parse_at(kind.parse, spec.config, recipe, ("stages", i, "config"))
    if spec.train:
        if not kind.trains_for(cfg):
            method = getattr(cfg, "method", None)
            what = f"stage kind {spec.kind!r}" + (f" with method {method!r}" if kind.trains_when is not None and method else "")
            raise ConfigError(f"{where}:{lines.line('stages', i, 'train')}: {what} does not train; remove 'train:'")
        _parse_at(TrainConfig.from_dict, spec.train, recipe, ("stages", i, "train"))
    if spec.recover and not kind.edits_structure:
        editing = [n for n in STAGES.names() if STAGES.get(n).edits_structure]
        raise ConfigError(f"{where}:{lines.line('stages', i, 'recover')}: only {' / '.join(editing)} stages take 'recover:'")
    if spec.recover:
        _parse_at(RecoverConfig.from_dict, {k: v for k, v in spec.recover.items() if k != "train"}, recipe,
                  ("stages", i, "recover"))
    if spec.model is not None and not kind.takes_model:
        takes = [n for n in STAGES.names() if STAGES.get(n).takes_model]
        raise ConfigError(f"{where}:{lines.line('stages', i, 'model')}: a {spec.kind} stage takes its model from "
                          f"'from: <stage>', not 'model:' (stages that build one: {', '.join(takes)})")
    if kind.needs_input and spec.source is None and spec.model is None:
        also = " and no 'model: {name: ...}'" if kind.takes_model else ""
        raise ConfigError(f"{where}:{spec.line}: stage {spec.name!r} ({spec.kind}) has no input model (it is first, or "
                          f"'from: none'){also}")
    if spec.kind == "distill" and not spec.teachers:
        raise ConfigError(f"{where}:{spec.line}: distill stage {spec.name!r} needs 'teacher: <earlier stage name>'")
    return cfg


def _check_from_teacher(recipe: Recipe, lines: YamlLines, i: int, spec: Any) -> None:
    """`model: {name: teacher, kwargs: {layers: ...}}`: a distill stage's student copied from its
    teacher's blocks; the teacher's type is checked when the stage runs."""
    where = f"{recipe.path}:{lines.line('stages', i, 'model')}"
    if spec.kind != "distill" or not spec.teachers:
        raise ConfigError(f"{where}: model name {FROM_TEACHER!r} (a student copied from its teacher's layers) needs a "
                          f"distill stage with 'teacher:'; stage {spec.name!r} is {spec.kind}")
    kwargs = dict(spec.model.get("kwargs") or {})
    if set(kwargs) != {"layers"}:
        raise ConfigError(f"{where}: model {FROM_TEACHER!r} takes exactly one argument, 'layers' (a count or a list of "
                          f"the teacher's block indices), got {sorted(kwargs) or 'none'}")


#: settings that name a path: in a recipe the run chooses them, inside the stage's folder
RUN_PATHS = {"checkpoint_dir": "checkpoint", "log_file": "checkpoint/metrics.jsonl", "cache_dir": "checkpoint/teacher_cache"}


def _path_key(raw: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """The key path of the first `RUN_PATHS` setting (not null) anywhere in `raw`, else None."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key in RUN_PATHS and value is not None:
                return (*path, key)
            deeper = _path_key(value, (*path, key))
            if deeper is not None:
                return deeper
    return None


def _check_no_paths(recipe: Recipe, lines: YamlLines, i: int, spec: Any) -> None:
    """A recipe never names where a stage writes: its folder in the run does (docs/security.md)."""
    for section in ("config", "train", "recover"):
        found = _path_key(getattr(spec, section), (section,))
        if found is not None:
            key = str(found[-1])
            raise ConfigError(f"{recipe.path}:{lines.line('stages', i, *found)}: stage {spec.name!r}: {key!r} is a path, "
                              f"and a recipe's stages write only inside their folder in the run (the run sets "
                              f"{key} to <stage folder>/{RUN_PATHS[key]}); remove it")


def validate_recipe(recipe: Recipe, *, trust_code: bool = False) -> list[Config]:
    """Check the recipe's data and measure sections and parse every stage's config; return the
    stage configs in order (raises on the first problem). A stage model named
    `package.module:factory` (code to import and run) needs `trust_code` (`--trust-code`), else
    `UntrustedCodeError` (exit 3) at its line, before anything is imported (docs/security.md)."""

    lines: YamlLines = recipe._lines  # type: ignore[attr-defined]
    name = recipe.data.get("name")
    if not isinstance(name, str) or name not in DATASETS:
        known = sorted(DATASETS.names())
        raise ConfigError(f"{recipe.path}:{lines.line('data', 'name')}: unknown dataset {name!r}"
                          f"{did_you_mean(str(name), known)}; known: {', '.join(known)}")
    options = {k: v for k, v in recipe.data.items() if k != "name"}
    _parse_at(lambda raw: check_dataset_options(name, raw), options, recipe, ("data",))
    _parse_at(lambda raw: MeasureConfig.from_dict(raw, where="measure"), recipe.measure, recipe, ("measure",))
    for i, spec in enumerate(recipe.stages):
        _check_no_paths(recipe, lines, i, spec)
        model = spec.model or {}
        if model and (not isinstance(model.get("name"), str) or not isinstance(model.get("kwargs") or {}, dict)):
            raise ConfigError(f"{recipe.path}:{lines.line('stages', i, 'model')}: 'model' needs a string 'name' and a "
                              "mapping 'kwargs'")
        if model.get("name") == FROM_TEACHER:
            _check_from_teacher(recipe, lines, i, spec)
        elif model:
            require_trusted(model["name"], trust_code=trust_code,
                            source=f"{recipe.path}:{lines.line('stages', i, 'model', 'name')}: stage {spec.name!r}")
            where = ("stages", i, "model", "kwargs") if model.get("kwargs") else ("stages", i, "model", "name")
            _parse_at(lambda raw, n=model["name"]: check_model_args(n, raw), dict(model.get("kwargs") or {}),
                      recipe, where)
    return [parse_stage_config(recipe, i) for i in range(len(recipe.stages))]
