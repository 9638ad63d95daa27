"""The transfer set of a label-free method: every training sample, labels dropped."""
from __future__ import annotations

from typing import Any

from condense.data.base import Splits
from condense.data.loader import without_labels
from condense.data.views import concat


def all_training_images(splits: Splits) -> Any:
    """Every training sample without labels: the labelled split plus the unlabelled part."""
    parts = [splits.train] + ([splits.unlabelled] if splits.unlabelled is not None else [])
    return without_labels(concat(parts))
