"""Distillation defaults by output kind (issue 26 item 5) and the shape check before training.

Tiny random Hugging Face models: an ALBERT encoder loaded by `build_model("hf:<folder>")` (per-token
hidden states) and a GPT-2 causal LM (next-token logits) wrapped the way `hf:` models are called.
The data is labelled (one class per text), which used to send per-token outputs to soft-KD + CE
over flattened tokens and crash inside cross-entropy.
"""
from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import torch
from torch import nn

import condense
from condense.core.errors import ConfigError
from condense.data.text import TextDataset
from condense.distill import DistillConfig, distill_fit
from condense.distill.losses import token_kd_loss, token_states_loss

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="needs transformers: pip install torch-condense[hf]")

VOCAB = 64


def _data(n: int = 24, labelled: bool = True) -> TextDataset:
    g = np.random.default_rng(0)
    lengths = g.integers(5, 13, size=n)
    ids = g.integers(1, VOCAB, size=int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    targets = g.integers(0, 3, size=n).astype(np.int64) if labelled else None
    return TextDataset(ids, offsets, pad_id=0, targets=targets)


def _albert(folder, hidden: int) -> nn.Module:
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(hidden)
    AlbertModel(AlbertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=hidden, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=2 * hidden,
                             max_position_embeddings=32)).save_pretrained(folder)
    return condense.build_model(f"hf:{folder}")


class TinyLM(nn.Module):
    """A GPT-2 causal LM called like an `hf:` model (input_ids, attention_mask by keyword): (B, T, V)."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        from condense.models.hf import SIGNATURE
        from condense.models.signature import set_signature

        torch.manual_seed(width + layers)
        self.lm = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=width, n_layer=layers, n_head=2,
                                             n_positions=32, bos_token_id=0, eos_token_id=0))
        set_signature(self, SIGNATURE)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _cfg(**kw) -> DistillConfig:
    train = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "device": "cpu", "progress": False, **kw.pop("train", {})}
    return DistillConfig(train=train, **kw)


def test_per_token_encoder_with_labels_uses_the_masked_feature_loss(tmp_path):
    teacher, student = _albert(tmp_path / "t", 32), _albert(tmp_path / "s", 16)  # widths differ: a projection
    assert teacher.task == "encoder"
    # labelled data; soft-KD + CE over flattened tokens used to crash here
    res = distill_fit(student, teacher, _data(), _cfg(), val_data=_data(8))
    picked = res.to_dict()["distill_defaults"]
    assert picked["output_kind"] == "token_states"
    assert [s["name"] for s in picked["losses"]] == ["token_states"] and "hidden states" in picked["why"]
    assert res.steps == 3 and "(B, T, 32)" in picked["why"]
    assert "val_loss" in res.history[-1] and res.best_epoch == 1  # validated against the teacher, through the projection


def test_token_states_loss_ignores_padding():
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    s2, t2 = s.clone(), t.clone()
    s2[0, 3:] += 100.0  # padding positions change: the loss does not
    for kind in ("mse", "cosine"):
        assert torch.allclose(token_states_loss(s, t, mask, kind), token_states_loss(s2, t2, mask, kind))
    assert torch.allclose(token_kd_loss(s, t, mask), token_kd_loss(s2, t2, mask))
    assert token_kd_loss(t, t, mask).abs() < 1e-6


def test_causal_lm_distils_with_token_kl_and_the_loss_falls():
    teacher, student = TinyLM(32, 2).eval(), TinyLM(16, 1)
    data = _data(32)
    batch = data.collate([data[i] for i in range(len(data))])

    def kl() -> float:
        with torch.no_grad():
            s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return float(token_kd_loss(s, t, batch["attention_mask"], temperature=2.0))

    before = kl()
    res = distill_fit(student, teacher, data, _cfg(temperature=2.0, train={"epochs": 6, "lr": 3e-3}),
                      val_data=_data(8))  # labelled (a class per text): validated against the teacher, not the labels
    assert {"val_loss", "val_token_agreement"} <= set(res.history[-1]) and res.best_epoch is not None
    picked = res.to_dict()["distill_defaults"]
    assert picked["output_kind"] == "token_logits"
    assert picked["losses"] == [{"name": "token_kd", "temperature": 2.0, "weight": 1.0}]  # no per-token targets
    after = kl()
    assert after < 0.8 * before, (before, after)


def test_a_loss_that_does_not_fit_is_a_config_error_with_both_shapes_before_training(tmp_path):
    teacher, student = _albert(tmp_path / "t", 32), _albert(tmp_path / "s", 32)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = _cfg(losses=[{"name": "soft_kd", "weight": 0.9}, {"name": "ce", "weight": 0.1}])
    with pytest.raises(ConfigError) as e:
        distill_fit(student, teacher, _data(), cfg)
    msg = str(e.value)
    assert re.search(r"loss 'ce' .*student output \(8, \d+, 32\).*target \(8,\).*expects", msg), msg
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # no optimizer step


def test_mismatched_widths_under_soft_kd_name_both_shapes(tmp_path):
    teacher, student = _albert(tmp_path / "t", 32), _albert(tmp_path / "s", 16)
    with pytest.raises(ConfigError, match=r"teacher output \(2, \d+, 32\), student output \(2, \d+, 16\).*'soft_kd'"):
        distill_fit(student, teacher, _data(), _cfg(losses=[{"name": "soft_kd"}]))


def test_output_kinds_and_their_defaults():
    from condense.distill.defaults import default_losses, output_kind

    lm, cfg = TinyLM(16, 1).eval(), DistillConfig(alpha=0.9, temperature=2.0)
    ids = torch.randint(1, VOCAB, (2, 5))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        out = lm(**batch)
    assert output_kind(lm, out, batch) == "token_logits"
    specs, _ = default_losses("token_logits", cfg, out, {**batch, "target": ids})  # per-token targets: + CE
    assert [(s["name"], s["weight"]) for s in specs] == [("token_kd", 0.9), ("ce", pytest.approx(0.1))]
    specs, why = default_losses("token_logits", cfg, out, {**batch, "target": torch.tensor([0, 1])})
    assert [s["name"] for s in specs] == ["token_kd"] and "label-free" in why  # a class per text: no CE invented
    net = nn.Linear(4, 3)
    x = {"input": torch.randn(2, 4)}
    assert output_kind(net, net(x["input"]), x) == "class_logits"
    assert [s["name"] for s in default_losses("class_logits", cfg, net(x["input"]), x)[0]] == ["soft_kd", "ce"]
