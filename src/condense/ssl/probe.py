"""Label-using probes of a representation: how well a frozen embedding separates classes.

`knn_accuracy` classifies each query sample by a cosine-similarity-weighted vote of its `k`
nearest labelled reference samples in embedding space (the kNN monitor of Wu et al. 2018,
"Unsupervised Feature Learning via Non-Parametric Instance Discrimination"). It needs labels on
both sets: it is the labelled counterpart of the self-supervised verbs.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError
from condense.core.taps import FeatureTap
from condense.data.base import ArrayDataset
from condense.data.loader import as_source
from condense.models.signature import batch_to, call_model, model_inputs


@torch.no_grad()
def embed_dataset(model: nn.Module, data: Any, layer: str = "flatten", batch_size: int = 512) -> torch.Tensor:
    """`(N, D)` embeddings of every input at `layer`, in eval mode (labels are not read)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    try:
        with FeatureTap(model, [layer], detach=True) as tap:
            for batch in as_source(data).batches(batch_size):
                call_model(model, batch_to(model_inputs(model, batch), device))
                out.append(tap[layer].flatten(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def knn_accuracy(
    model: nn.Module, reference: ArrayDataset, query: ArrayDataset, *, layer: str = "flatten", k: int = 10,
    temperature: float = 0.1,
) -> float:
    """Accuracy on `query` of a weighted kNN classifier over `reference`'s embeddings (both labelled)."""
    for name, d in (("reference", reference), ("query", query)):
        if not isinstance(d, ArrayDataset) or not d.labelled:
            raise ConfigError(f"knn_accuracy(): the {name} data must be a labelled ArrayDataset (it scores against labels)")
        if len(d) == 0:
            raise ConfigError(f"knn_accuracy(): the {name} data is empty")
    if k < 1:
        raise ConfigError(f"knn_accuracy(): k must be >= 1, got {k}")
    ref = F.normalize(embed_dataset(model, reference, layer), dim=1)
    qry = F.normalize(embed_dataset(model, query, layer), dim=1)
    n_classes = int(max(int(reference.targets.max()), int(query.targets.max()))) + 1
    sim = qry @ ref.t()
    top, idx = sim.topk(min(k, len(ref)), dim=1)
    votes = torch.zeros(len(qry), n_classes).scatter_add_(1, reference.targets[idx], (top / temperature).exp())
    return float((votes.argmax(1) == query.targets).float().mean())


__all__ = ["embed_dataset", "knn_accuracy"]
