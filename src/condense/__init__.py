"""condense: make trained PyTorch models small and fast without losing what they know, and prove it.

The public API is a handful of verbs and their configs::

    import condense
    splits = condense.load_dataset("digits")
    model = condense.build_model("cnn", in_channels=1, image_size=8, num_classes=10)
    result = condense.train_model(model, splits.train, condense.TrainConfig(epochs=10), splits.val)
    student = condense.distill(student, result.model, splits.train, condense.DistillConfig(alpha=0.9))
    condense.prune(student, condense.PruneConfig.from_dict({"method": "channel", "ratio": 0.5}))
    q = condense.quantize(student, condense.QuantizeConfig(), calibration=splits.train)
    condense.evaluate(student, splits.test); condense.profile(student, condense.example_inputs(splits.test))
    condense.save(student, "runs/student"); condense.load("runs/student")

The verbs are imported on first use (`condense.prune` imports the pruning package then), so that
`import condense.cli` and `condense --help` do not pay for torch. Several verbs share their name
with the subpackage that holds them (`condense.distill`, `evaluate`, `prune`, `quantize`, `tune`);
the name on `condense` is always the verb, whatever is imported later (importing a subpackage
does not rebind it).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from condense.version import __version__  # noqa: F401  (re-exported)

#: registry kind -> the packages whose import registers its entries. The package root is the one
#: module that names every method package: a lower layer's registry (the structural edits that
#: `load()` replays) imports them on a lookup that misses (`condense.core.registry`), so no layer
#: imports the layers above it.
REGISTRY_PROVIDERS: dict[str, tuple[str, ...]] = {
    "edit": ("condense.lowrank", "condense.prune", "condense.quantize"),
    "pruning method": ("condense.prune",),
    "importance": ("condense.prune",),
    # stage kinds / methods (`condense.core.method.METHODS`): one record file per method package
    "method": ("condense.train.method", "condense.distill.method", "condense.prune.method", "condense.lowrank.method",
               "condense.quantize.method", "condense.export.method", "condense.evaluate.method",
               "condense.tune.method", "condense.ssl.method", "condense.reduce.method"),
}

#: public name -> the module that defines it (imported when the name is first read)
_EXPORTS = {
    "load": "condense.artifacts", "save": "condense.artifacts",
    "CondenseError": "condense.core.errors", "ConfigError": "condense.core.errors",
    "InputFileError": "condense.core.errors", "RunError": "condense.core.errors",
    "AugmentConfig": "condense.data", "load_dataset": "condense.data",
    "example_inputs": "condense.data.loader",
    "DistillConfig": "condense.distill", "distill": "condense.distill",
    "DataFreeConfig": "condense.distill.datafree", "datafree_distill": "condense.distill.datafree",
    "evaluate": "condense.evaluate", "profile": "condense.evaluate",
    "export_onnx": "condense.export",
    "FactorizeConfig": "condense.lowrank", "factorize": "condense.lowrank",
    "ModelSpec": "condense.models", "build_model": "condense.models",
    "InputSignature": "condense.models.signature", "set_signature": "condense.models.signature",
    "PruneConfig": "condense.prune", "prune": "condense.prune",
    "QuantizeConfig": "condense.quantize", "quantize": "condense.quantize",
    "resume_run": "condense.recipes", "run_recipe": "condense.recipes",
    "CoresetConfig": "condense.reduce", "PCAConfig": "condense.reduce", "SelectConfig": "condense.reduce",
    "reduce_data": "condense.reduce",
    "PretrainConfig": "condense.ssl", "pretrain": "condense.ssl", "ssl_distill": "condense.ssl",
    "Callback": "condense.train", "SupervisedTask": "condense.train", "TrainConfig": "condense.train",
    "fit": "condense.train", "train_model": "condense.train", "edit_and_recover": "condense.train.edit",
    "TuneConfig": "condense.tune", "tune": "condense.tune",
}

if TYPE_CHECKING:  # what type checkers and editors see; at run time the names load on first use
    from condense.artifacts import load, save
    from condense.core.errors import CondenseError, ConfigError, InputFileError, RunError
    from condense.data import AugmentConfig, load_dataset
    from condense.data.loader import example_inputs
    from condense.distill import DistillConfig, distill
    from condense.distill.datafree import DataFreeConfig, datafree_distill
    from condense.evaluate import evaluate, profile
    from condense.export import export_onnx
    from condense.lowrank import FactorizeConfig, factorize
    from condense.models import ModelSpec, build_model
    from condense.models.signature import InputSignature, set_signature
    from condense.prune import PruneConfig, prune
    from condense.quantize import QuantizeConfig, quantize
    from condense.recipes import resume_run, run_recipe
    from condense.reduce import CoresetConfig, PCAConfig, SelectConfig, reduce_data
    from condense.ssl import PretrainConfig, pretrain, ssl_distill
    from condense.train import Callback, SupervisedTask, TrainConfig, fit, train_model
    from condense.train.edit import edit_and_recover
    from condense.tune import TuneConfig, tune


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # a subpackage read as an attribute (`condense.models` after `import condense`)
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'condense' has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later reads find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """`condense` itself: importing a subpackage whose name is a verb (`condense.prune`) binds the
    subpackage on its parent; that binding is skipped, so `condense.prune` stays the verb."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AugmentConfig", "Callback", "CondenseError", "ConfigError", "CoresetConfig", "DataFreeConfig",
    "DistillConfig", "FactorizeConfig", "InputFileError", "InputSignature", "ModelSpec", "PCAConfig", "PretrainConfig", "PruneConfig",
    "QuantizeConfig", "RunError", "SelectConfig", "SupervisedTask", "TrainConfig", "TuneConfig",
    "__version__", "build_model", "datafree_distill", "distill", "edit_and_recover", "evaluate", "example_inputs", "export_onnx", "factorize", "fit",
    "load", "load_dataset", "pretrain", "profile", "prune", "quantize", "reduce_data", "resume_run",
    "run_recipe", "save", "set_signature", "ssl_distill", "train_model", "tune",
]
