"""The one training loop and its pieces."""
from condense.train.callbacks import Callback, FitState
from condense.train.config import TrainConfig
from condense.train.fit import FitResult, choose_device, fit, train_model
from condense.train.supervised import SupervisedTask
from condense.train.task import Task, TaskBase

__all__ = [
    "Callback",
    "FitResult",
    "FitState",
    "SupervisedTask",
    "Task",
    "TaskBase",
    "TrainConfig",
    "choose_device",
    "fit",
    "train_model",
]
