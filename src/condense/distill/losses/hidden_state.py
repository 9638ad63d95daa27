"""TinyBERT hidden-state distillation (Jiao et al. 2020).

X. Jiao, Y. Yin, L. Shang, X. Jiang, X. Chen, L. Li, F. Wang, Q. Liu, "TinyBERT: Distilling BERT
for Natural Language Understanding", Findings of EMNLP 2020, arXiv:1909.10351, eq. 8-9:

    L_hidn = sum_{(m, n) in layer map} MSE(H^S_m W_h, H^T_n)       (+ MSE(E^S W_e, E^T))

`H^S_m` / `H^T_n`: the outputs `(B, T, D)` of student block m and teacher block n; `E`: the
embedding layer's output (`embeddings: true`). `W_h` is a learned Linear used when the widths
differ (TinyBERT's official code shares one, `fit_dense`, for every layer and the embeddings:
`shared_adapter: true`; `false` gives each pair its own). It is built lazily from the first batch
by `materialize` (before the optimizer) and belongs to the task, not to the deployed student.

The MSE is the mean over *real* tokens and features: positions whose `attention_mask` is 0
(padding) are left out, so the loss does not depend on how a batch was padded. Layer terms are
summed, as in the paper (tune `weight` for the number of pairs).

`layer_map`, 0-based transformer blocks (the embeddings are not numbered):
- "uniform": TinyBERT's `n = g(m) = m * N / M` (1-based), i.e. student block m -> teacher block
  `(m + 1) * N // M - 1`; 3 student, 6 teacher layers -> {0: 1, 1: 3, 2: 5} (last to last);
- "kept": the teacher blocks a student built with `build_model("hf:...", layers=...)` was copied
  from (its `build_kwargs["layers"]`, e.g. {0: 0, 1: 2, 2: 5});
- a mapping {student block: teacher block}; negative indices count from the end; keys may be
  strings of digits (JSON).
Block names are read from the models (`condense.distill.layers`), so a recipe never names modules.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from condense.core.errors import ConfigError, did_you_mean
from condense.distill.layers import embeddings_name, transformer_blocks
from condense.distill.losses.base import DistillLoss, LossInputs, crop_tokens, token_mask

_MAP_MODES = ("uniform", "kept")
_ADAPTER_MODES = ("auto", "always", "none")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """TinyBERT's uniform strategy, 0-based: student block m -> teacher block (m+1)*N//M - 1."""
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(f"hidden_state.layer_map='uniform' maps {student_layers} student layers onto "
                          f"{teacher_layers} teacher layers; the student must not be deeper than the teacher")
    return {m: (m + 1) * teacher_layers // student_layers - 1 for m in range(student_layers)}


def masked_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of `(s - t)^2` over the real tokens (`mask` `(B, T)`, 1 = real) and the features.

    `student` and `teacher` are `(B, T, D)` (a longer cached teacher is cut to T).
    """
    teacher = crop_tokens(teacher, student.shape[1])
    if student.shape != teacher.shape:
        raise ConfigError(f"hidden_state: student states {tuple(student.shape)} do not match the teacher's "
                          f"{tuple(teacher.shape)}; use adapter: auto for a learned projection")
    m = token_mask(mask, student.shape[0], student.shape[1], student.device).unsqueeze(-1)
    sq = (student.float() - teacher.float()).pow(2) * m
    return sq.sum() / (m.sum() * student.shape[-1]).clamp_min(1.0)


def hidden_state_loss(
    student: Sequence[Tensor], teacher: Sequence[Tensor], mask: Tensor | None = None,
    projectors: Sequence[nn.Module | None] | None = None,
) -> Tensor:
    """Sum over pairs of `masked_mse(projector_k(student_k), teacher_k, mask)`."""
    if len(student) != len(teacher) or not student:
        raise ConfigError(f"hidden_state: {len(student)} student and {len(teacher)} teacher states; need equal, >= 1")
    projectors = projectors if projectors is not None else [None] * len(student)
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t, p in zip(student, teacher, projectors, strict=True):
        total = total + masked_mse(p(s) if p is not None else s, t, mask)
    return total


def _parse_map(layer_map: Any) -> str | dict[int, int]:
    if isinstance(layer_map, str):
        if layer_map not in _MAP_MODES:
            raise ConfigError(f"hidden_state.layer_map must be one of {', '.join(_MAP_MODES)} or a mapping "
                              f"{{student layer: teacher layer}}, got {layer_map!r}{did_you_mean(layer_map, _MAP_MODES)}")
        return layer_map
    if not isinstance(layer_map, Mapping) or not layer_map:
        raise ConfigError(f"hidden_state.layer_map must be 'uniform', 'kept' or a non-empty mapping "
                          f"{{student layer: teacher layer}}, got {layer_map!r}")
    out: dict[int, int] = {}
    for k, v in layer_map.items():
        key = int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k
        if isinstance(key, bool) or not isinstance(key, int) or isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"hidden_state.layer_map: entries must be integer layer indices, got {k!r}: {v!r}")
        if key in out:
            raise ConfigError(f"hidden_state.layer_map: student layer {key} is mapped twice")
        out[key] = v
    return out


class HiddenStateLoss(DistillLoss):
    """TinyBERT hidden-state MSE between mapped transformer blocks (module docstring)."""

    needs: ClassVar[frozenset[str]] = frozenset({"features"})
    compares_classes: ClassVar[bool] = False

    def __init__(
        self,
        layer_map: Literal["uniform", "kept"] | dict[int, int] = "uniform",
        embeddings: bool = False,
        adapter: Literal["auto", "always", "none"] = "auto",
        shared_adapter: bool = True,
    ) -> None:
        super().__init__()
        self.layer_map = _parse_map(layer_map)
        if not isinstance(embeddings, bool):
            raise ConfigError(f"hidden_state.embeddings must be true or false, got {embeddings!r}")
        if adapter not in _ADAPTER_MODES:
            raise ConfigError(f"hidden_state.adapter must be one of {', '.join(_ADAPTER_MODES)}, got {adapter!r}"
                              f"{did_you_mean(str(adapter), _ADAPTER_MODES)}")
        if not isinstance(shared_adapter, bool):
            raise ConfigError(f"hidden_state.shared_adapter must be true or false, got {shared_adapter!r}")
        self.embeddings, self.adapter, self.shared_adapter = embeddings, adapter, shared_adapter
        #: (student module, teacher module) pairs, set by `bind`; the embeddings pair first
        self.pairs: list[tuple[str, str]] = []
        #: resolved {student block: teacher block}, set by `bind`
        self.resolved_map: dict[int, int] = {}
        self.projectors = nn.ModuleList()  # one shared, or one per pair (Identity where not needed)
        self._materialized = False

    # -- models -> module names ------------------------------------------------------------------
    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        s_blocks = transformer_blocks(student, "student")
        t_blocks = transformer_blocks(teacher, "teacher")
        ns, nt = len(s_blocks), len(t_blocks)
        if self.layer_map == "uniform":
            mapping = uniform_layer_map(ns, nt)
        elif self.layer_map == "kept":
            kept = getattr(student, "build_kwargs", {}).get("layers")
            if not isinstance(kept, Sequence) or len(kept) != ns:
                raise ConfigError("hidden_state.layer_map='kept' needs a student built with "
                                  "build_model('hf:...', layers=...) (it records the teacher blocks it copied); "
                                  "use 'uniform' or an explicit mapping")
            mapping = dict(enumerate(int(i) for i in kept))
        else:
            mapping = dict(self.layer_map)
        resolved: dict[int, int] = {}
        for s, t in mapping.items():
            for side, i, n in (("student", s, ns), ("teacher", t, nt)):
                if not -n <= i < n:
                    raise ConfigError(f"hidden_state.layer_map: {side} layer {i} (in {s}: {t}) is out of range: "
                                      f"the {side} has {n} transformer layers (0..{n - 1})")
            resolved[s % ns] = t % nt
        if len(resolved) != len(mapping):
            raise ConfigError(f"hidden_state.layer_map {mapping}: a student layer is mapped twice")
        self.resolved_map = dict(sorted(resolved.items()))
        pairs = [(s_blocks[s], t_blocks[t]) for s, t in self.resolved_map.items()]
        if self.embeddings:
            pairs.insert(0, (embeddings_name(student, "student"), embeddings_name(teacher, "teacher")))
        if self._materialized and pairs != self.pairs:
            raise ConfigError("hidden_state: bound to other layers after its projections were built")
        self.pairs = pairs

    def feature_layers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if not self.pairs:
            raise ConfigError("hidden_state: the layers are not resolved yet; call bind(student, teacher) first "
                              "(condense.distill does)")
        return tuple(dict.fromkeys(s for s, _ in self.pairs)), tuple(dict.fromkeys(t for _, t in self.pairs))

    # -- projections -------------------------------------------------------------------------------
    def build(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> None:
        """Create the projection(s) from the observed widths (idempotent)."""
        if self._materialized:
            return
        widths = [(int(s.shape[-1]), int(t.shape[-1])) for s, t in zip(student, teacher, strict=True)]
        like = student[0]
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else None

        def linear(ds: int, dt: int) -> nn.Module:
            return nn.Linear(ds, dt).to(device=like.device, dtype=dtype)

        need = [self.adapter == "always" or (self.adapter == "auto" and ds != dt) for ds, dt in widths]
        if self.adapter == "none" or not any(need):
            pass
        elif self.shared_adapter:
            if len(set(widths)) > 1:
                raise ConfigError(f"hidden_state: one shared projection cannot map these (student, teacher) widths "
                                  f"{sorted(set(widths))}; set shared_adapter: false")
            self.projectors.append(linear(*widths[0]))
        else:
            self.projectors.extend(linear(ds, dt) if n else nn.Identity() for (ds, dt), n in zip(widths, need, strict=True))
        self._materialized = True

    def _projectors(self, count: int) -> list[nn.Module | None]:
        if not len(self.projectors):
            return [None] * count
        if len(self.projectors) == 1:
            return [self.projectors[0]] * count
        return list(self.projectors)

    def materialize(self, inp: LossInputs) -> None:
        self.build(*self._states(inp))

    # -- loss ------------------------------------------------------------------------------------
    def _states(self, inp: LossInputs) -> tuple[list[Tensor], list[Tensor]]:
        self.feature_layers()  # bound?
        out: tuple[list[Tensor], list[Tensor]] = ([], [])
        for s_name, t_name in self.pairs:
            for side, feats, name, dest in (("student", inp.student_features, s_name, out[0]),
                                            ("teacher", inp.teacher_features, t_name, out[1])):
                if name not in feats:
                    have = ", ".join(sorted(feats)) or "none"
                    raise ConfigError(f"hidden_state: no {side} feature {name!r} in this batch (have: {have})")
                dest.append(feats[name])
        return out

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        if not self._materialized:
            self.build(student, teacher)
        return hidden_state_loss(student, teacher, mask, self._projectors(len(student)))

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        s, t = self._states(inp)
        return self(s, t, inp.mask)

    def extra_repr(self) -> str:
        mapping = self.resolved_map or self.layer_map
        return (f"layer_map={mapping!r}, embeddings={self.embeddings}, adapter={self.adapter!r}, "
                f"shared_adapter={self.shared_adapter}")
