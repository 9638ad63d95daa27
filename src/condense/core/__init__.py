"""Shared building blocks: errors, registry, configs, layer selection, feature taps, atomic io."""
from condense.core.config import Config
from condense.core.errors import (
    CondenseError,
    ConfigError,
    InputFileError,
    NonFiniteLossError,
    RunError,
    UnknownNameError,
)
from condense.core.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from condense.core.registry import Registry
from condense.core.select import select_modules
from condense.core.taps import FeatureTap

__all__ = [
    "CondenseError",
    "Config",
    "ConfigError",
    "FeatureTap",
    "InputFileError",
    "NonFiniteLossError",
    "Registry",
    "RunError",
    "UnknownNameError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "select_modules",
]
