"""SEED: self-supervised distillation by matching similarity distributions over a queue.

Z. Fang, J. Wang, L. Wang, L. Zhang, Y. Yang, Z. Liu, "SEED: Self-supervised Distillation for
Visual Representation", ICLR 2021, arXiv:2101.04731 (eq. 3-5).

A FIFO queue `D = [d_1 .. d_K]` holds L2-normalised *teacher* embeddings of earlier samples. For
a sample with normalised teacher embedding `t` and (projected, normalised) student embedding `s`,
the queue is extended with `t` itself (`d_{K+1} = t`, as in the authors' code) and

    p_T(j) = exp(t . d_j / tau_T) / sum_k exp(t . d_k / tau_T)
    p_S(j) = exp(s . d_j / tau_S) / sum_k exp(s . d_k / tau_S)
    L      = mean_batch( - sum_j p_T(j) log p_S(j) )

(cross-entropy; equal to KL(p_T || p_S) up to the teacher's entropy, which has no gradient).
After the loss, the batch's teacher embeddings are enqueued and the oldest leave (FIFO).
Paper values: tau_S = 0.2, tau_T = 0.01 with a 65536-long queue on ImageNet; a small data set
wants a shorter queue and a softer teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError


def seed_loss(
    student: Tensor, teacher: Tensor, queue: Tensor, student_temperature: float = 0.2, teacher_temperature: float = 0.05
) -> Tensor:
    """SEED cross-entropy. `student`, `teacher`: `(B, D)` (normalised here); `queue`: `(K, D)` unit rows
    (K may be 0: then only the sample itself is in the distribution and the loss is 0)."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ConfigError(f"seed: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be one (B, D) shape")
    if queue.dim() != 2 or queue.shape[1] != teacher.shape[1]:
        raise ConfigError(f"seed: queue must be (K, {teacher.shape[1]}), got {tuple(queue.shape)}")
    if student_temperature <= 0 or teacher_temperature <= 0:
        raise ConfigError("seed: temperatures must be > 0")
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.detach().float(), dim=1)
    q = queue.detach().float()
    logits_s = torch.cat([(s * t).sum(1, keepdim=True), s @ q.t()], dim=1) / student_temperature
    logits_t = torch.cat([(t * t).sum(1, keepdim=True), t @ q.t()], dim=1) / teacher_temperature
    p_t = F.softmax(logits_t, dim=1)
    return -(p_t * F.log_softmax(logits_s, dim=1)).sum(dim=1).mean()


class SEEDLoss(nn.Module):
    """SEED with its queue as buffers (moved with `.to()`, checkpointed with the task).

    `queue` `(size, dim)`, `ptr` (next row to write) and `filled` (rows holding real entries);
    only filled rows enter the distribution, so no random vectors pollute the first steps.
    In training mode, `forward` enqueues the batch's teacher embeddings after computing the loss.
    """

    def __init__(
        self, dim: int, size: int = 1024, student_temperature: float = 0.2, teacher_temperature: float = 0.05
    ) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ConfigError(f"SEEDLoss: dim and size must be >= 1, got dim={dim}, size={size}")
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ConfigError("SEEDLoss: temperatures must be > 0")
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def entries(self) -> Tensor:
        """The filled rows of the queue (oldest first is not guaranteed; order does not matter)."""
        return self.queue[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, teacher: Tensor) -> None:
        """Write the normalised rows of `teacher` at `ptr` (wrapping), overwriting the oldest entries."""
        t = F.normalize(teacher.detach().float(), dim=1)
        size = self.queue.shape[0]
        if t.shape[0] > size:
            t = t[-size:]
        rows = (int(self.ptr) + torch.arange(t.shape[0], device=self.queue.device)) % size
        self.queue[rows] = t.to(self.queue.dtype)
        self.ptr.fill_((int(self.ptr) + t.shape[0]) % size)
        self.filled.fill_(min(int(self.filled) + t.shape[0], size))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        # a copy: the enqueue below writes into the queue the autograd graph would otherwise hold
        queue = self.entries().clone()
        loss = seed_loss(student, teacher, queue, self.student_temperature, self.teacher_temperature)
        if self.training:
            self.enqueue(teacher)
        return loss

    def extra_repr(self) -> str:
        return (f"size={self.queue.shape[0]}, dim={self.queue.shape[1]}, "
                f"tau_s={self.student_temperature}, tau_t={self.teacher_temperature}")
