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

The verbs are imported here, eagerly: several share their name with the subpackage that holds
them (`condense.distill`, `prune`, `quantize`, `tune`), and importing them here makes the name
on `condense` the verb, whatever is imported later.
"""
from __future__ import annotations

__version__ = "0.1.0"

from condense.artifacts import load, save  # noqa: E402
from condense.core.errors import CondenseError, ConfigError, InputFileError, RunError  # noqa: E402
from condense.data import AugmentConfig, load_dataset  # noqa: E402
from condense.data.loader import example_inputs  # noqa: E402
from condense.distill import DistillConfig, distill  # noqa: E402
from condense.distill.datafree import DataFreeConfig, datafree_distill  # noqa: E402
from condense.evaluate import evaluate, profile  # noqa: E402
from condense.export import export_onnx  # noqa: E402
from condense.models import ModelSpec, build_model  # noqa: E402
from condense.models.signature import InputSignature, set_signature  # noqa: E402
from condense.prune import PruneConfig, prune  # noqa: E402
from condense.quantize import QuantizeConfig, quantize  # noqa: E402
from condense.recipes import resume_run, run_recipe  # noqa: E402
from condense.reduce import CoresetConfig, PCAConfig, SelectConfig, reduce_data  # noqa: E402
from condense.ssl import PretrainConfig, pretrain, ssl_distill  # noqa: E402
from condense.train import Callback, SupervisedTask, TrainConfig, fit, train_model  # noqa: E402
from condense.tune import TuneConfig, tune  # noqa: E402

__all__ = [
    "AugmentConfig", "Callback", "CondenseError", "ConfigError", "CoresetConfig", "DataFreeConfig",
    "DistillConfig", "InputFileError", "InputSignature", "ModelSpec", "PCAConfig", "PretrainConfig", "PruneConfig",
    "QuantizeConfig", "RunError", "SelectConfig", "SupervisedTask", "TrainConfig", "TuneConfig",
    "__version__", "build_model", "datafree_distill", "distill", "evaluate", "example_inputs", "export_onnx", "fit",
    "load", "load_dataset", "pretrain", "profile", "prune", "quantize", "reduce_data", "resume_run",
    "run_recipe", "save", "set_signature", "ssl_distill", "train_model", "tune",
]
