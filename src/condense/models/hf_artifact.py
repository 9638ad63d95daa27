"""What `condense.save` / `load` need from an hf: model: state-dict key mapping to and from
transformers names, config.json and side files, whether transformers can open the saved folder,
and the `hf` section of condense.json."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.io import atomic_path, atomic_write_text
from condense.models.hf_folder import CONFIG_NAME, side_files, transformers_module
from condense.models.hf_runtime import hf_auto_class, quiet_transformers
from condense.models.hf_wrappers import HFModel

STATE_PREFIX = "hf."  # wrapper state-dict keys = STATE_PREFIX + transformers key names


def to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wrapper state-dict keys -> transformers key names (the `hf.` prefix dropped)."""
    return {k.removeprefix(STATE_PREFIX): v for k, v in state.items()}


def from_hf_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers key names -> this wrapper's keys (inverse of `to_hf_state`)."""
    own = model.state_dict()
    return {(STATE_PREFIX + k if STATE_PREFIX + k in own or k not in own else k): v for k, v in state.items()}


def write_side_files(model: HFModel, folder: Path) -> list[str]:
    """config.json (from the in-memory config) and the source's tokenizer / sentence-transformers
    files into `folder`; returns their relative paths. Each file is fsynced."""
    cfg = copy.deepcopy(model.hf.config)
    cfg.architectures = [type(model.hf).__name__]
    atomic_write_text(folder / CONFIG_NAME, cfg.to_json_string(use_diff=True))
    written = [CONFIG_NAME]
    src = model.source_dir
    for rel in side_files(src) if src.is_dir() else []:
        with atomic_path(folder / rel) as tmp:
            shutil.copyfile(src / rel, tmp)
        written.append(rel)
    return written


def config_builds(build: Any, config: Any, hf_state: dict[str, torch.Tensor]) -> bool:
    """Whether `build(config)` (a transformers class or `AutoModel...from_config`), made on the
    meta device, has exactly the keys and shapes of `hf_state`."""
    try:
        with quiet_transformers(), torch.device("meta"):
            ref = build(config)
    except Exception:  # noqa: BLE001  (a config transformers cannot rebuild: not loadable)
        return False
    own = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    return own == {k: tuple(v.shape) for k, v in hf_state.items()}


def transformers_loadable(model: HFModel, hf_state: dict[str, torch.Tensor]) -> bool:
    """Whether `hf_state` has exactly the keys and shapes transformers builds from the config
    (False after structural edits such as pruned channels: then only condense.load opens it)."""
    return config_builds(hf_auto_class(model.auto_class).from_config, model.hf.config, hf_state)


def artifact_info(model: HFModel, loadable: bool) -> dict[str, Any]:
    """The `hf` section of condense.json."""
    tf = transformers_module()
    return {"task": model.task, "auto_class": model.auto_class, "architecture": type(model.hf).__name__,
            "transformers_version": tf.__version__, "transformers_loadable": loadable,
            "source": str(model.source_dir)}
