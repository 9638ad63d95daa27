"""Pruning configs: one small dataclass per method, plus the `PRUNERS` registry of handlers.

`PruneConfig.from_dict({"method": "channel", "ratio": 0.5})` dispatches on `method` to the
method's own config class, so a recipe stage and the Python API take the same objects and a key
that the chosen method does not read is an error (not silently ignored).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.core.registry import Registry


def check_ratio(value: float, field: str) -> None:
    """A pruning ratio is the fraction removed: in [0, 1) (1.0 would remove everything)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{field} must be in [0, 1) (the fraction removed), got {value!r}")


@dataclasses.dataclass
class PruneConfig(Config):
    """Base of every pruning config; `from_dict` picks the subclass named by `method`."""

    method: str = "magnitude"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "") -> PruneConfig:
        if cls is PruneConfig:
            data = dict(data or {})
            method = str(data.get("method", "magnitude"))
            sub = PRUNERS.get(method).config
            return sub.from_dict({**data, "method": method}, where=where)
        return super().from_dict(data, where)  # type: ignore[return-value]


@dataclasses.dataclass
class MagnitudeConfig(PruneConfig):
    """Unstructured magnitude pruning (Han et al. 2015): zero the `ratio` smallest |w|.

    `scope="layer"` removes `ratio` of every selected layer's weights; `"global"` ranks all
    selected weights together (one threshold), so layers end with different sparsities. Global
    ranks raw magnitudes: a layer initialised at a small scale (the zoo's classifiers, N(0, 0.01))
    can be wiped out; leave it out with `ignore=["classifier"]` (a warning names such layers).
    """

    method: Literal["magnitude"] = "magnitude"
    ratio: float = 0.5
    scope: Literal["layer", "global"] = "layer"

    def validate(self) -> None:
        check_ratio(self.ratio, "MagnitudeConfig.ratio")


@dataclasses.dataclass
class RandomConfig(PruneConfig):
    """Unstructured random pruning: the baseline any scorer has to beat."""

    method: Literal["random"] = "random"
    ratio: float = 0.5
    seed: int = 0

    def validate(self) -> None:
        check_ratio(self.ratio, "RandomConfig.ratio")


@dataclasses.dataclass
class NMConfig(PruneConfig):
    """N:M semi-structured sparsity (Mishra et al. 2021): keep the `n` largest of every `m`
    consecutive input weights of each output row (2:4 by default)."""

    method: Literal["nm"] = "nm"
    n: int = 2
    m: int = 4

    def validate(self) -> None:
        if self.m < 1 or not 0 < self.n < self.m:
            raise ConfigError(f"NMConfig needs 0 < n < m, got n={self.n}, m={self.m}")


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A channel-importance scorer for structured pruning, registered in `SCORERS` by its module.

    `score(model, group, state)` -> per-unit importance of the group (higher = keep), or None to
    fall back to L1 (named in a warning). `prepare(model, groups, data, batches, seed)` runs once
    before the groups are scored (a gradient pass, say) and returns the `state`; `needs_data`:
    the scorer reads `prune(..., data=...)`.
    """

    score: Callable[..., Any]
    prepare: Callable[..., Any] | None = None
    needs_data: bool = False


#: importance name -> Scorer. A new scorer is one module that calls `SCORERS.register(name,
#: Scorer(...), help=...)`, named in `condense.REGISTRY_PROVIDERS["importance"]` (see
#: `condense/prune/fpgm.py`).
SCORERS: Registry[Scorer] = Registry("importance")

Importance = str  # a name in SCORERS: l1, l2, bn_gamma, taylor, gradient, random, fpgm, ...


def check_importance(name: str, field: str) -> None:
    """A misspelt scorer fails where the config is read (recipe validation included), not mid-run."""
    try:
        SCORERS.get(name)
    except ConfigError as e:  # did-you-mean and the known names, prefixed by the field
        raise ConfigError(f"{field}: {e}") from None


@dataclasses.dataclass
class ChannelConfig(PruneConfig):
    """Structured channel pruning that physically removes channels and neurons.

    `ratio` is the fraction of channels removed from every selected dependency group
    (`scope="layer"`) or from all selected groups together (`scope="global"`, ranked by
    normalised importance; no group loses more than `max_group_ratio`). `ratios` overrides the
    ratio per group: keys are selection patterns (exact name, `re:<regex>`, type name) matched
    against the group's producer layers. Kept widths are rounded to multiples of `round_to`.
    Importance: "l1" (Li et al. 2017), "l2", "bn_gamma" (Liu et al. 2017), "taylor"
    (Molchanov et al. 2019; needs labelled `data`), "gradient" (gates on every unit where its
    consumers read it, Michel et al. 2019's head-gate gradient for any group; needs `data`,
    labels optional), "random". `taylor_batches` batches feed the data-driven scores.
    """

    method: Literal["channel"] = "channel"
    ratio: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    importance: Importance = "l1"
    round_to: int = 1
    ratios: dict[str, float] | None = None
    max_group_ratio: float = 0.9
    taylor_batches: int = 4
    seed: int = 0

    def validate(self) -> None:
        name = type(self).__name__
        check_ratio(self.ratio, f"{name}.ratio")
        check_ratio(self.max_group_ratio, f"{name}.max_group_ratio")
        for key, r in (self.ratios or {}).items():
            check_ratio(r, f"{name}.ratios[{key!r}]")
        if self.round_to < 1:
            raise ConfigError(f"{name}.round_to must be >= 1, got {self.round_to}")
        if self.taylor_batches < 1:
            raise ConfigError(f"{name}.taylor_batches must be >= 1, got {self.taylor_batches}")
        check_importance(self.importance, f"{name}.importance")


@dataclasses.dataclass
class SlimmingConfig(ChannelConfig):
    """Network slimming (Liu et al. 2017): prune channels with the smallest BatchNorm |gamma|,
    ranked globally, after training with `SlimmingCallback`'s L1 penalty on gamma."""

    method: Literal["slimming"] = "slimming"  # type: ignore[assignment]
    scope: Literal["layer", "global"] = "global"
    importance: Literal["bn_gamma"] = "bn_gamma"  # type: ignore[assignment]


@dataclasses.dataclass
class TransformerConfig(PruneConfig):
    """Structured pruning of BERT-family encoders: attention heads and FFN neurons, physically removed.

    `heads`: fraction of all attention heads removed. `head_scope="global"` (default) ranks every
    head of every layer together by its per-layer L2-normalised importance, as Michel, Levy &
    Neubig 2019 ("Are Sixteen Heads Really Better than One?") do, so layers end with different
    head counts (never fewer than `min_heads_per_layer`); `"layer"` removes that fraction from
    each layer. `ffn`: fraction of each layer's FFN neurons removed; every layer loses the same
    number (transformers needs one `intermediate_size`), each choosing its own neurons; the kept
    width is rounded to a multiple of `round_to`. `importance`: "gradient" (Michel et al.'s
    head-gate gradient), "taylor" (|activation x gradient|, Molchanov et al. 2017), "activation"
    (mean |activation|) or "weight" (L2 norm of the weights; needs no data). The data-driven
    ones read `calibration_batches` batches of `batch_size` (>= 2: the encoder loss compares
    sentences within a batch) from `prune(..., data=...)`, shuffled with `seed`.
    """

    method: Literal["transformer"] = "transformer"
    heads: float = 0.0
    ffn: float = 0.0
    importance: Literal["gradient", "taylor", "activation", "weight"] = "gradient"
    head_scope: Literal["global", "layer"] = "global"
    min_heads_per_layer: int = 1
    round_to: int = 8
    calibration_batches: int = 8
    batch_size: int = 16
    seed: int = 0

    def validate(self) -> None:
        name = type(self).__name__
        check_ratio(self.heads, f"{name}.heads")
        check_ratio(self.ffn, f"{name}.ffn")
        if self.heads == 0 and self.ffn == 0:
            raise ConfigError(f"{name}: heads and ffn are both 0, nothing would be pruned; set heads=... and/or ffn=...")
        if self.min_heads_per_layer < 1:
            raise ConfigError(f"{name}.min_heads_per_layer must be >= 1 (a layer without heads cannot run), "
                              f"got {self.min_heads_per_layer}")
        if self.round_to < 1:
            raise ConfigError(f"{name}.round_to must be >= 1, got {self.round_to}")
        if self.calibration_batches < 1:
            raise ConfigError(f"{name}.calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.batch_size < 2:
            raise ConfigError(f"{name}.batch_size must be >= 2 (the calibration loss compares examples), got {self.batch_size}")


@dataclasses.dataclass
class PruneContext:
    """What `prune()` hands a handler besides the config."""

    example_inputs: Any = None
    targets: Any = None
    ignore: Any = None
    data: Any = None


@dataclasses.dataclass
class VocabConfig(PruneConfig):
    """Vocabulary trimming of a Hugging Face encoder: keep the word-embedding rows of the tokens
    the data uses (Abdaoui et al. 2020, "Load What You Need: Smaller Versions of Multilingual
    BERT"; Ushio et al. 2023, "Efficient Multilingual Language Model Compression through
    Vocabulary Trimming"). The tokenizer is unchanged: a token id map inside the model sends kept
    ids to their new rows and every other id to [UNK], so text made only of kept tokens gives
    exactly the untrimmed output.

    `min_count`: keep tokens seen at least this often in the data (`prune(..., data=...)`, its
    `input_ids` under its attention mask); `max_tokens`: keep at most this many (most frequent
    first; special tokens always kept and counted in); `max_batches` / `batch_size`: how much of
    the data is read (None: all of it).
    """

    method: Literal["vocab"] = "vocab"
    min_count: int = 1
    max_tokens: int | None = None
    max_batches: int | None = None
    batch_size: int = 64

    def validate(self) -> None:
        name = type(self).__name__
        if self.min_count < 1:
            raise ConfigError(f"{name}.min_count must be >= 1, got {self.min_count}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ConfigError(f"{name}.max_tokens must be >= 2 (the special tokens alone need that), got {self.max_tokens}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError(f"{name}.max_batches must be >= 1 or null, got {self.max_batches}")
        if self.batch_size < 1:
            raise ConfigError(f"{name}.batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class Pruner:
    """A registered method: its config class and `run(model, config, context) -> model`.

    `reads_data`: the method reads the training data itself (transformer importance batches,
    vocabulary token counts) and works on models called with dict batches (Hugging Face)."""

    config: type[PruneConfig]
    run: Callable[[nn.Module, Any, PruneContext], nn.Module]
    reads_data: bool = False


PRUNERS: Registry[Pruner] = Registry("pruning method")
