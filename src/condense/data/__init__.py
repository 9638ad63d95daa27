"""Data sources, splits, batching and augmentations.

Sources are registered in `DATASETS` by explicit import below; each is a loader
`fn(*, seed=0, val_fraction=0.1, test_fraction=0.2, labelled_fraction=None, **options) -> Splits`.
Nothing is ever downloaded: file-based sources read what the user already has on disk.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from condense.core.errors import ConfigError, did_you_mean
from condense.core.registry import Registry
from condense.data import cifar10, digits, imagefolder, mnist, stdlib_text, tabular, text
from condense.data.augment import Augment, AugmentConfig, build_augment
from condense.data.base import ArrayDataset, Splits, iterate_batches, make_splits, num_batches
from condense.data.images import ImageFolderDataset
from condense.data.lazy import SampleReadError
from condense.data.text import TextDataset, text_dataset
from condense.data.tokenizer import TextTokenizer, load_tokenizer

DATASETS: Registry[Callable[..., Splits]] = Registry("dataset")

DATASETS.register("digits", digits.load_digits)
DATASETS.register("cifar10", cifar10.load_cifar10)
DATASETS.register("mnist", mnist.load_mnist)
DATASETS.register("fashion-mnist", mnist.load_fashion_mnist)
DATASETS.register("imagefolder", imagefolder.load_imagefolder)
DATASETS.register("csv", tabular.load_csv)
DATASETS.register("jsonl", tabular.load_jsonl)
DATASETS.register("breast_cancer", tabular.load_breast_cancer)
DATASETS.register("text", text.load_text)
DATASETS.register("stdlib-text", stdlib_text.load_stdlib_text)


def dataset_options(name: str) -> list[str]:
    """The keyword options the source `name` accepts."""
    sig = inspect.signature(DATASETS.get(name))
    return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def load_dataset(name: str, /, **kwargs: Any) -> Splits:
    """Load the registered source `name` with its options (unknown options are a ConfigError)."""
    check_dataset_options(name, kwargs)
    return DATASETS.get(name)(**kwargs)


def check_dataset_options(name: str, options: Any) -> None:
    """ConfigError naming the first option `name`'s loader does not take (with a did-you-mean)."""
    known = dataset_options(name)
    for key in options:
        if key not in known:
            raise ConfigError(
                f"dataset {name!r}: unknown option {key!r}{did_you_mean(key, known)}; "
                f"options: {', '.join(known)}"
            )


def list_datasets() -> list[tuple[str, str]]:
    """[(name, one-line help)] for every registered source, sorted by name."""
    return [(n, DATASETS.help(n)) for n in DATASETS.names()]


__all__ = [
    "DATASETS",
    "check_dataset_options",
    "ArrayDataset",
    "Augment",
    "AugmentConfig",
    "ImageFolderDataset",
    "SampleReadError",
    "Splits",
    "TextDataset",
    "TextTokenizer",
    "build_augment",
    "dataset_options",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "load_tokenizer",
    "make_splits",
    "num_batches",
    "text_dataset",
]
