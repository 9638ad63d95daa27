"""Configs of the low-rank verbs: `FactorizeConfig` (rank selection + decomposition) and
`DepthConfig` (whole-block removal). Plain dataclasses: a recipe stage and the Python API take
the same objects, and unknown keys are errors."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from condense.core.config import Config
from condense.core.errors import ConfigError


@dataclasses.dataclass
class FactorizeConfig(Config):
    """Replace Linear / Conv2d layers by products of thinner layers (module docstring of `lowrank`).

    `method`: "activation_svd" whitens each layer by the Cholesky factor of its input covariance
    measured on calibration data before truncating (SVD-LLM, Wang et al. 2024; ASVD, Yuan et al.
    2023), so the kept directions are the ones the data excites; "svd" truncates the weights
    alone (Denton et al. 2014), needs no data, and loses far more on real models.
    `conv`: how a k x k Conv2d is split: "tucker2" (1x1 -> k x k core -> 1x1, Kim et al. 2016),
    "channel" (k x k to `rank` channels -> 1x1, Zhang et al. 2016), "spatial" (k x 1 -> 1 x k,
    Jaderberg et al. 2014), or "none" (leave convolutions alone). A 1x1 conv is a matrix: always
    "channel".
    `rank_by`: "energy" (per layer, the smallest rank keeping `energy` of the squared singular
    values), "params" / "macs" (one energy level for all layers, chosen so the selected layers
    lose `ratio` of their parameters / MACs), or "sensitivity" (per-layer metric measured at
    `sensitivity_ratios`, then the pruning allocator: least sensitive layers lose most, until
    `ratio` of the `budget` is gone). `rank` fixes one rank for every layer; `ranks` fixes it per
    layer (exact module name -> int, or [in, out] for tucker2). Ranks are multiples of
    `round_to`. A layer whose factorized form would not have fewer parameters and fewer MACs is
    left alone and reported; `check_latency=True` also times each replacement against the
    original on a calibration batch and keeps the faster (a measurement: two runs may differ).
    `targets` / `ignore`: the selection language (names, `re:<regex>`, types); default every
    Linear and Conv2d. Calibration: `calibration_batches` x `batch_size` samples, at most
    `max_vectors` input vectors per layer and batch (sampled with `seed`). `mask_padding=True`
    leaves padded tokens out of a transformer layer's input covariance: the exact objective (a
    padded position never reaches a pooled output), yet on MiniLM it measured 0.734 vs 0.760
    held-out cosine at 50 % (docs/lowrank.md), so the default keeps them.
    """

    method: Literal["activation_svd", "svd"] = "activation_svd"
    conv: Literal["tucker2", "channel", "spatial", "none"] = "tucker2"
    rank_by: Literal["energy", "params", "macs", "sensitivity"] = "energy"
    energy: float = 0.95
    ratio: float = 0.5
    budget: Literal["params", "macs"] = "params"
    rank: int | None = None
    ranks: dict[str, Any] = dataclasses.field(default_factory=dict)
    round_to: int = 8
    targets: list[str] | None = None
    ignore: list[str] | None = None
    calibration_batches: int = 8
    batch_size: int = 64
    max_vectors: int = 4096
    check_latency: bool = False
    mask_padding: bool = False
    sensitivity_ratios: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"FactorizeConfig.energy is the fraction of spectral energy kept, in (0, 1]; got {self.energy}")
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"FactorizeConfig.ratio is the fraction of the budget removed, in (0, 1); got {self.ratio}")
        for field in ("round_to", "calibration_batches", "batch_size", "max_vectors"):
            if getattr(self, field) < 1:
                raise ConfigError(f"FactorizeConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"FactorizeConfig.rank must be >= 1, got {self.rank}")
        for name, r in self.ranks.items():
            ok = (isinstance(r, int) and not isinstance(r, bool) and r >= 1) or (
                isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in r))
            if not ok:
                raise ConfigError(f"FactorizeConfig.ranks[{name!r}] must be a positive int or [in, out] ints, got {r!r}")
        if not self.sensitivity_ratios or any(not 0.0 < r < 1.0 for r in self.sensitivity_ratios):
            raise ConfigError(f"FactorizeConfig.sensitivity_ratios must be fractions in (0, 1), got {self.sensitivity_ratios}")


@dataclasses.dataclass
class DepthConfig(Config):
    """Remove whole residual blocks / transformer layers (depth reduction).

    `drop`: how many blocks to remove, chosen by measured importance: each candidate block is
    replaced by the identity on its own and the metric (accuracy, or mean cosine to the model
    for an encoder) is measured on `eval_batches` batches of held-out data; the blocks whose
    removal costs least go (one-shot block-drop sensitivity, as in Gromov et al. 2024 /
    "ShortGPT", Men et al. 2024). `blocks`: remove exactly these (module names) instead.
    `targets` / `ignore` restrict (or, for `targets`, widen) the candidates; by default the
    candidates are a Hugging Face model's layers (families in `hf_layers.LAYER_PATHS`), else
    the blocks found on the exported graph whatever their attribute names: a module whose
    output adds its own input with the shape kept
    (an identity shortcut, so removal leaves a valid network; see `lowrank.depth`).
    """

    drop: int = 1
    blocks: list[str] | None = None
    targets: list[str] | None = None
    ignore: list[str] | None = None
    eval_batches: int = 8
    batch_size: int = 64

    def validate(self) -> None:
        if self.blocks is None and self.drop < 1:
            raise ConfigError(f"DepthConfig.drop must be >= 1, got {self.drop}")
        if self.blocks is not None and not self.blocks:
            raise ConfigError("DepthConfig.blocks is empty; name at least one block or use drop")
        if self.eval_batches < 1 or self.batch_size < 1:
            raise ConfigError("DepthConfig.eval_batches and batch_size must be >= 1")
