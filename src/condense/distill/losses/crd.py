"""Contrastive representation distillation (Tian et al. 2020), InfoNCE form with a memory bank.

Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020,
arXiv:1910.10699.

What is implemented (a simplified but faithful form of the authors' code):
- Features are flattened to `(B, D)` and embedded by trainable linear heads `g_s`, `g_t` to a
  common `feat_dim`, then L2-normalised: `z_s = g_s(f_s)/||.||`, `z_t = g_t(f_t)/||.||`.
- Two memory banks `M_s`, `M_t` of shape `(n_data, feat_dim)` hold one unit vector per training
  sample (registered buffers: they move with `.to()` and are checkpointed).
- Each batch draws `n_negatives` indices uniformly from `[0, n_data)`, shared by the batch; an
  anchor's own index is masked out of its negatives. Both directions, as in the paper's code:

      L_s = -log( e^{z_s.z_t / tau} / (e^{z_s.z_t / tau} + sum_k e^{z_s.M_t[k] / tau}) )
      L_t = -log( e^{z_t.z_s / tau} / (e^{z_t.z_s / tau} + sum_k e^{z_t.M_s[k] / tau}) )
      L = mean_batch(L_s) + mean_batch(L_t)

- In training mode the banks are updated for the batch's indices only, after the loss:
  `M[i] <- normalize(m * M[i] + (1 - m) * z_i)` with momentum `m` (0.5 in the paper).

Differences from the paper: InfoNCE (softmax cross-entropy) replaces the NCE binary objective
with its `n_data`-scaled noise constant; the positive is the current embedding of the other
network, not its memory entry; negatives are shared across the batch. The banks are not
synchronised across DDP ranks (each rank updates its own copy).

The data must yield each sample's dataset `index` (`0 <= index < n_data`). With `s_dim` /
`t_dim` left as None the heads are created lazily from the first batch: call `materialize`
(or run one forward) before building the optimizer and before loading a checkpoint.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.distill.losses.base import (
    FeatureLoss,
    LossInputs,
    check_positive,
    check_positive_int,
    check_unit_interval,
)


def crd_info_nce(
    z_s: Tensor, z_t: Tensor, memory_s: Tensor, memory_t: Tensor, index: Tensor, negatives: Tensor, temperature: float
) -> Tensor:
    """Two-way InfoNCE of unit embeddings `z_s`, `z_t` `(B, d)` against memory rows `negatives` `(K,)`."""
    own = negatives.unsqueeze(0) == index.reshape(-1, 1)  # (B, K): an anchor's own sample
    pos = (z_s * z_t).sum(dim=1, keepdim=True)
    neg_t = z_s @ memory_t.index_select(0, negatives).t()
    neg_s = z_t @ memory_s.index_select(0, negatives).t()
    logits_s = torch.cat([pos, neg_t.masked_fill(own, float("-inf"))], dim=1) / temperature
    logits_t = torch.cat([pos, neg_s.masked_fill(own, float("-inf"))], dim=1) / temperature
    zeros = torch.zeros(z_s.shape[0], dtype=torch.long, device=z_s.device)
    return F.cross_entropy(logits_s, zeros) + F.cross_entropy(logits_t, zeros)


class CRDLoss(FeatureLoss):
    """CRD between two named features; trainable (embedding heads) with a memory bank."""

    needs: ClassVar[frozenset[str]] = frozenset({"features", "index"})

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        *,
        n_data: int,
        s_dim: int | None = None,
        t_dim: int | None = None,
        feat_dim: int = 128,
        n_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.n_data = check_positive_int(n_data, "crd.n_data")
        if self.n_data < 2:
            raise ConfigError("crd.n_data must be >= 2 (negatives are other samples)")
        self.feat_dim = check_positive_int(feat_dim, "crd.feat_dim")
        self.n_negatives = check_positive_int(n_negatives, "crd.n_negatives")
        self.temperature = check_positive(temperature, "crd.temperature")
        self.momentum = check_unit_interval(momentum, "crd.momentum")
        self.s_dim = None if s_dim is None else check_positive_int(s_dim, "crd.s_dim")
        self.t_dim = None if t_dim is None else check_positive_int(t_dim, "crd.t_dim")
        self.embed_s: nn.Linear | None = None if s_dim is None else nn.Linear(s_dim, feat_dim)
        self.embed_t: nn.Linear | None = None if t_dim is None else nn.Linear(t_dim, feat_dim)
        self.register_buffer("memory_s", F.normalize(torch.randn(self.n_data, feat_dim), dim=1))
        self.register_buffer("memory_t", F.normalize(torch.randn(self.n_data, feat_dim), dim=1))

    def _head(self, which: str, dim: int, like: Tensor) -> nn.Linear:
        head = getattr(self, f"embed_{which}")
        if head is None:
            head = nn.Linear(dim, self.feat_dim).to(device=like.device, dtype=self.memory_s.dtype)
            setattr(self, f"embed_{which}", head)
            setattr(self, f"{which}_dim", dim)
        elif head.in_features != dim:
            raise ConfigError(f"crd: {which}_dim is {head.in_features} but the feature has {dim} values")
        return head

    def materialize(self, inp: LossInputs) -> None:
        s, t = self._features(inp)
        self._head("s", s[0].numel(), s)
        self._head("t", t[0].numel(), t)

    def forward(self, student_feature: Tensor, teacher_feature: Tensor, index: Tensor) -> Tensor:
        b = student_feature.shape[0]
        if teacher_feature.shape[0] != b:
            raise ConfigError(f"crd: student batch {b} != teacher batch {teacher_feature.shape[0]}")
        index = index.reshape(-1).long()
        if index.shape[0] != b:
            raise ConfigError(f"crd: got {index.shape[0]} sample indices for a batch of {b}")
        if int(index.min()) < 0 or int(index.max()) >= self.n_data:
            raise ConfigError(
                f"crd: sample index out of range [0, {self.n_data}); set n_data to the dataset size"
            )
        fs, ft = student_feature.reshape(b, -1), teacher_feature.reshape(b, -1)
        head_s, head_t = self._head("s", fs.shape[1], fs), self._head("t", ft.shape[1], ft)
        dtype = self.memory_s.dtype
        z_s = F.normalize(head_s(fs.to(head_s.weight.dtype)).to(dtype), dim=1)
        z_t = F.normalize(head_t(ft.to(head_t.weight.dtype)).to(dtype), dim=1)
        negatives = torch.randint(0, self.n_data, (self.n_negatives,), device=index.device)
        loss = crd_info_nce(z_s, z_t, self.memory_s, self.memory_t, index, negatives, self.temperature)
        if self.training:
            self._update(self.memory_s, index, z_s)
            self._update(self.memory_t, index, z_t)
        return loss

    @torch.no_grad()
    def _update(self, memory: Tensor, index: Tensor, z: Tensor) -> None:
        mixed = memory.index_select(0, index) * self.momentum + z.detach() * (1.0 - self.momentum)
        memory.index_copy_(0, index, F.normalize(mixed, dim=1))

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        if inp.index is None:
            raise ConfigError("crd: needs each sample's dataset index, but the batch has none")
        return self(*self._features(inp), inp.index)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_data={self.n_data}, feat_dim={self.feat_dim}, "
            f"n_negatives={self.n_negatives}, temperature={self.temperature}, momentum={self.momentum}"
        )
