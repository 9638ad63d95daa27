"""Recipes are typed data: YAML (safe loader) -> `Recipe` of ordered `StageSpec`s.

    version: 1
    name: digits-chain
    seed: 0
    data: {name: digits}                  # any load_dataset options beside `name`
    stages:
      - name: teacher
        kind: train
        model: {name: cnn, kwargs: {}}    # build a fresh model (else: the previous stage's output)
        train: {epochs: 15, lr: 0.003}
      - name: student
        kind: distill
        model: {name: cnn, kwargs: {width: 8}}
        teacher: teacher                  # stage name(s) whose models teach
        config: {alpha: 0.9, temperature: 4}
        train: {epochs: 30}
      - {name: pruned, kind: prune, from: student, config: {method: channel, ratio: 0.5, round_to: 8}}

Every mapping is checked against the config dataclass of its kind; an unknown or misspelled key
is an error naming the file, the line and a close valid key.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from condense.core.errors import ConfigError, InputFileError, did_you_mean

#: a stage name is also its folder's name in the run (`NN-<name>`): letters, digits, '_', '.', '-', no '..'
STAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STAGE_NAME_RULE = ("1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..' "
                   "(it names the stage's folder in the run)")


def stage_name_problem(name: object) -> str | None:
    """Why `name` cannot be a stage name (None when it can)."""
    if not isinstance(name, str) or not STAGE_NAME_RE.fullmatch(name) or ".." in name:
        return f"stage name {name!r} is not allowed: use {STAGE_NAME_RULE}"
    return None


def check_stage_name(name: object) -> None:
    """Raise ConfigError when `name` is not a safe stage name (see `STAGE_NAME_RE`)."""
    problem = stage_name_problem(name)
    if problem:
        raise ConfigError(problem)


STAGE_KEYS = ("name", "kind", "from", "model", "teacher", "config", "train", "recover")
TOP_KEYS = ("version", "name", "seed", "data", "stages", "measure")


@dataclasses.dataclass
class StageSpec:
    """One stage as written: kind + config (+ training settings), and where its model comes from."""

    name: str
    kind: str
    source: str | None  # stage name whose output is the input model; None = build `model`
    model: dict[str, Any] | None
    teachers: list[str]
    config: dict[str, Any]
    train: dict[str, Any]
    recover: dict[str, Any]
    line: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.source is not None:
            out["from"] = self.source
        if self.model is not None:
            out["model"] = self.model
        if self.teachers:
            out["teacher"] = list(self.teachers)
        for key in ("config", "train", "recover"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


@dataclasses.dataclass
class Recipe:
    name: str
    seed: int
    data: dict[str, Any]
    stages: list[StageSpec]
    path: str
    measure: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "name": self.name, "seed": self.seed, "data": self.data,
                "measure": self.measure, "stages": [s.to_dict() for s in self.stages]}


class YamlLines:
    """Line numbers (1-based) of YAML nodes, looked up by key path."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.root = node

    def line(self, *path: str | int) -> int:
        node, best = self.root, (self.root.start_mark.line + 1 if self.root is not None else 1)
        for key in path:
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for k, v in node.value:
                    if k.value == key:
                        best, nxt = k.start_mark.line + 1, v
                        break
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                best = node.start_mark.line + 1
            else:
                node = None
            if node is None:
                break
        return best


#: a recipe whose YAML expands (aliases followed) to more nodes than this is refused ("billion laughs")
MAX_YAML_NODES = 100_000
MAX_RECIPE_BYTES = 1_000_000


def _expanded_nodes(node: yaml.Node, limit: int) -> int:
    """Nodes of the document with every alias followed, counting stops past `limit`."""
    count, stack = 0, [node]
    while stack:
        n = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend((k, v))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return count


def _check_duplicate_keys(node: yaml.Node | None, where: str) -> None:
    seen_nodes: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if id(n) in seen_nodes:
            continue
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            keys: dict[Any, int] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in keys and k.value != "<<":
                        raise ConfigError(f"{where}:{k.start_mark.line + 1}: duplicate key {k.value!r} (first at line "
                                          f"{keys[k.value]}); YAML would silently keep only the last one")
                    keys[k.value] = k.start_mark.line + 1
                stack.extend((k, v))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def read_yaml(path: str | Path) -> tuple[Any, YamlLines]:
    """Parse a YAML file with the safe loader: never runs code, refuses duplicate keys, alias
    expansions past `MAX_YAML_NODES` nodes, files past `MAX_RECIPE_BYTES` and undecodable bytes."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such recipe file")
    raw = p.read_bytes()
    if len(raw) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{p}: {len(raw):,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_nodes(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ConfigError(f"{p}: the YAML expands to more than {MAX_YAML_NODES:,} nodes through its aliases; "
                              "refusing it (an alias bomb?)")
        _check_duplicate_keys(node, str(p))
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: the YAML is nested too deeply") from None
    return data, YamlLines(node)


def load_recipe(path: str | Path) -> Recipe:
    """Read and structurally validate a recipe (stage configs are checked by `validate_recipe`)."""
    where = str(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: a recipe is a mapping with 'stages', got {type(data).__name__}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}:{lines.line(key)}: unknown top-level key {key!r}{did_you_mean(str(key), TOP_KEYS)}")
    if data.get("version", 1) != 1:
        raise ConfigError(f"{where}:{lines.line('version')}: unsupported recipe version {data.get('version')!r} (expected 1)")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError(f"{where}:{lines.line('stages')}: 'stages' must be a non-empty list")
    data_cfg = data.get("data") or {"name": "digits"}
    if not isinstance(data_cfg, dict) or "name" not in data_cfg:
        raise ConfigError(f"{where}:{lines.line('data')}: 'data' must be a mapping with a 'name' (e.g. digits)")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}:{lines.line('seed')}: seed must be an integer, got {seed!r}")
    stages: list[StageSpec] = []
    for i, raw in enumerate(raw_stages):
        line = lines.line("stages", i)
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}:{line}: stage {i + 1} must be a mapping with 'kind'")
        for key in raw:
            if key not in STAGE_KEYS:
                raise ConfigError(f"{where}:{lines.line('stages', i, key)}: unknown stage key {key!r}{did_you_mean(str(key), STAGE_KEYS)}; valid: {', '.join(STAGE_KEYS)}")
        kind = raw.get("kind")
        if not isinstance(kind, str):
            raise ConfigError(f"{where}:{line}: stage {i + 1} has no 'kind'")
        name = str(raw.get("name") or f"{kind}{i + 1}")
        problem = stage_name_problem(name)
        if problem:
            at = lines.line("stages", i, "name") if "name" in raw else line
            raise ConfigError(f"{where}:{at}: {problem}" + ("" if "name" in raw else "; give the stage a 'name:'"))
        if any(s.name == name for s in stages):
            raise ConfigError(f"{where}:{line}: two stages are named {name!r}")
        source = raw.get("from", "previous")
        model = raw.get("model")
        if model is not None:
            if not isinstance(model, dict) or "name" not in model or set(model) - {"name", "kwargs"}:
                raise ConfigError(f"{where}:{lines.line('stages', i, 'model')}: 'model' must be {{name: ..., kwargs: {{...}}}}")
            source = None if "from" not in raw else source
        if source == "previous":
            source = stages[-1].name if stages else None
        elif source in ("none", None):
            source = None
        elif not any(s.name == source for s in stages):
            raise ConfigError(f"{where}:{lines.line('stages', i, 'from')}: 'from: {source}' names no earlier stage"
                              f"{did_you_mean(str(source), [s.name for s in stages])}")
        teachers = raw.get("teacher") or []
        teachers = [teachers] if isinstance(teachers, str) else teachers
        if not isinstance(teachers, list) or not all(isinstance(t, str) for t in teachers):
            raise ConfigError(f"{where}:{lines.line('stages', i, 'teacher')}: 'teacher' must be a stage name or a list "
                              f"of stage names, got {raw.get('teacher')!r}")
        for t in teachers:
            if not any(s.name == t for s in stages):
                raise ConfigError(f"{where}:{lines.line('stages', i, 'teacher')}: teacher {t!r} names no earlier stage"
                                  f"{did_you_mean(str(t), [s.name for s in stages])}")
        for key in ("config", "train", "recover"):
            if raw.get(key) is not None and not isinstance(raw[key], dict):
                raise ConfigError(f"{where}:{lines.line('stages', i, key)}: '{key}' must be a mapping")
        stages.append(StageSpec(name=name, kind=kind, source=source, model=model, teachers=teachers,
                                config=dict(raw.get("config") or {}), train=dict(raw.get("train") or {}),
                                recover=dict(raw.get("recover") or {}), line=line))
    measure = data.get("measure") or {}
    if not isinstance(measure, dict):
        raise ConfigError(f"{where}:{lines.line('measure')}: 'measure' must be a mapping (batch_sizes, repeats, ...), "
                          f"got {type(measure).__name__}")
    recipe = Recipe(name=str(data.get("name") or Path(path).stem), seed=seed, data=dict(data_cfg), stages=stages,
                    path=where, measure=dict(measure))
    recipe._lines = lines  # type: ignore[attr-defined]
    return recipe
