"""Torch checkpoint files (`.pt`, `.pth`, ...): a state_dict read by torch's weights-only
unpickler into an architecture the caller names, or a whole pickled module only when trusted."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.artifacts.header import load_state_strict
from condense.core.errors import ConfigError, InputFileError
from condense.models.edits import edit_log, replay_edits
from condense.models.registry import ModelSpec
from condense.models.signature import DEFAULT_SIGNATURE, set_signature, signature_of

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}

#: keys under which training scripts commonly nest the state_dict of a checkpoint
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_SPEC_HINT = ("name the code that builds its architecture: load(path, spec=ModelSpec('package.module:factory', "
              "{...})), or on the command line --model package.module:factory [--model-arg K=V]")


def _tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _state_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict a checkpoint holds (top level, or under one of `_STATE_KEYS`), else None."""
    if _tensor_mapping(obj):
        return obj
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if _tensor_mapping(obj.get(key)):
                return obj[key]
    return None


def load_checkpoint(p: Path, spec: ModelSpec | None, trust_pickle: bool, map_location: Any) -> nn.Module:
    """A `.pt` file: a state_dict into `spec`'s architecture, or a trusted pickled module (see `load`)."""
    import pickle

    try:  # torch's weights-only unpickler: tensors and plain containers only, never code
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        obj = None  # holds more than weights (a pickled module): only with trust_pickle
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise InputFileError(f"{p}: cannot read this checkpoint, truncated or not a torch file "
                             f"({str(e).splitlines()[0]})") from None
    state = _state_of(obj)
    if state is None and obj is not None:
        raise InputFileError(f"{p}: holds a {type(obj).__name__} without a state_dict of tensors; expected a "
                             "state_dict or a whole torch.nn.Module")
    if state is None:
        if not trust_pickle:
            raise InputFileError(
                f"{p}: refusing to load a pickle checkpoint (it can run arbitrary code); "
                "pass trust_pickle=True / --trust-pickle only if you trust its source, or save its "
                "state_dict() instead and name the architecture (--model package.module:factory)"
            )
        try:
            module = torch.load(p, map_location=map_location, weights_only=False)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, AttributeError, ImportError) as e:
            raise InputFileError(f"{p}: cannot unpickle this checkpoint ({type(e).__name__}: {e})") from None
        state = _state_of(module)
        if not isinstance(module, nn.Module) and state is None:
            raise InputFileError(f"{p}: the pickle holds a {type(module).__name__}, expected a whole torch.nn.Module")
        if isinstance(module, nn.Module):
            if spec is None:
                return module
            return _into_spec(spec, module.state_dict(), p, module)
    if spec is None:
        raise ConfigError(f"{p}: holds a state_dict (weights only, no architecture); {_SPEC_HINT}")
    return _into_spec(spec, state, p, None)


def _into_spec(spec: ModelSpec, state: dict[str, torch.Tensor], p: Path, module: nn.Module | None) -> nn.Module:
    """Build `spec`, replay the pickled `module`'s recorded edits (if any), load `state` strictly."""
    model = spec.build()
    edits = list(edit_log(module))
    if edits:
        replay_edits(model, edits)
    load_state_strict(model, state, source=f"{p} (into {spec.name})")
    if module is not None and signature_of(module) != DEFAULT_SIGNATURE:
        set_signature(model, signature_of(module))
    model.eval()
    return model
