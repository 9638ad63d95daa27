"""condense: make trained PyTorch models small and fast without losing what they know, and prove it.

The public API is a handful of verbs and their configs::

    import condense
    splits = condense.load_dataset("digits")
    model = condense.build_model("cnn", in_channels=1, image_size=8, num_classes=10)
    result = condense.train_model(model, splits.train, condense.TrainConfig(epochs=10), splits.val)
    condense.evaluate(result.model, splits.test)
    condense.profile(result.model, splits.test.inputs[:1])
    condense.save(result.model, "runs/teacher"); condense.load("runs/teacher")
    condense.export_onnx(result.model, splits.test.inputs[:1], "teacher.onnx")

Names are imported lazily so `import condense` stays cheap and free of import cycles.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # artifacts
    "save": "condense.artifacts",
    "load": "condense.artifacts",
    # models and data
    "build_model": "condense.models",
    "ModelSpec": "condense.models",
    "load_dataset": "condense.data",
    "AugmentConfig": "condense.data",
    # training
    "fit": "condense.train",
    "train_model": "condense.train",
    "TrainConfig": "condense.train",
    "SupervisedTask": "condense.train",
    "Callback": "condense.train",
    # methods
    "distill": "condense.distill",
    "DistillConfig": "condense.distill",
    "prune": "condense.prune",
    "PruneConfig": "condense.prune",
    "quantize": "condense.quantize",
    "QuantizeConfig": "condense.quantize",
    "pretrain": "condense.ssl",
    "PretrainConfig": "condense.ssl",
    "ssl_distill": "condense.ssl",
    "tune": "condense.tune",
    "reduce_data": "condense.reduce",
    "PCAConfig": "condense.reduce",
    "SelectConfig": "condense.reduce",
    "CoresetConfig": "condense.reduce",
    "datafree_distill": "condense.distill.datafree",
    "DataFreeConfig": "condense.distill.datafree",
    "TuneConfig": "condense.tune",
    "run_recipe": "condense.recipes",
    "resume_run": "condense.recipes",
    # measurement and export
    "evaluate": "condense.evaluate",
    "profile": "condense.evaluate",
    "export_onnx": "condense.export",
    # errors
    "CondenseError": "condense.core.errors",
    "ConfigError": "condense.core.errors",
    "InputFileError": "condense.core.errors",
    "RunError": "condense.core.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'condense' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
