"""SplitAttention computes what nn.MultiheadAttention computes (every mask kind, batch layouts,
kdim/vdim, with and without bias, with and without returned weights), and inside torch's own
Transformer layers, whose fused fast path it declines."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from condense.prune.mha import SplitAttention, split_attention

B, T, S, E = 3, 5, 6, 16


def _inputs(batch_first: bool, kdim: int | None, batched: bool = True):
    g = torch.Generator().manual_seed(0)

    def shape(n: int, e: int):
        return ((B, n, e) if batch_first else (n, B, e)) if batched else (n, e)

    kd = kdim or E
    return torch.randn(*shape(T, E), generator=g), torch.randn(*shape(S, kd), generator=g), \
        torch.randn(*shape(S, kd), generator=g)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 8])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("masks", ["none", "bool", "float", "causal"])
def test_same_outputs_and_weights_as_multihead_attention(batch_first, kdim, bias, masks):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, 4, kdim=kdim, vdim=kdim, bias=bias, batch_first=batch_first).eval()
    split = SplitAttention.from_mha(mha).eval()
    q, k, v = _inputs(batch_first, kdim)
    kw: dict = {}
    if masks == "bool":
        kw["attn_mask"] = torch.rand(T, S) > 0.7
        kw["attn_mask"][:, 0] = False
        kw["key_padding_mask"] = torch.zeros(B, S, dtype=torch.bool)
        kw["key_padding_mask"][0, -2:] = True
    elif masks == "float":
        kw["attn_mask"] = torch.randn(B * 4, T, S)
        kw["key_padding_mask"] = torch.randn(B, S)
    elif masks == "causal":
        kw["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(T)[:, :S] if S == T else \
            torch.ones(T, S, dtype=torch.bool).triu(1)
        kw["is_causal"] = True
    for need in (True, False):
        for average in (True, False):
            a = mha(q, k, v, need_weights=need, average_attn_weights=average, **kw)
            b = split(q, k, v, need_weights=need, average_attn_weights=average, **kw)
            torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)
            if need:
                torch.testing.assert_close(b[1], a[1], rtol=1e-5, atol=1e-6)
            else:
                assert a[1] is None and b[1] is None


def test_unbatched_inputs():
    mha = nn.MultiheadAttention(E, 4).eval()
    split = SplitAttention.from_mha(mha).eval()
    q, k, v = _inputs(False, None, batched=False)
    a, b = mha(q, k, v), split(q, k, v)
    torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b[1], a[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_first", [False, True])
def test_inside_transformer_encoder_and_decoder_layers(norm_first):
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, 4, 32, batch_first=True, norm_first=norm_first), 2,
                                enable_nested_tensor=False).eval()
    dec = nn.TransformerDecoderLayer(E, 4, 32, batch_first=True, norm_first=norm_first).eval()
    x, mem = torch.randn(2, 7, E), torch.randn(2, 4, E)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, -3:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    with torch.no_grad():  # no grad: torch takes its fused fast path for the original
        ref = (enc(x, src_key_padding_mask=pad), enc(x, mask=causal, is_causal=True), dec(x, mem, tgt_mask=causal))
    enc2, dec2 = copy.deepcopy(enc), copy.deepcopy(dec)
    assert split_attention(enc2) == ["layers.0.self_attn", "layers.1.self_attn"]
    assert split_attention(dec2) == ["self_attn", "multihead_attn"]
    with torch.no_grad():
        got = (enc2(x, src_key_padding_mask=pad), enc2(x, mask=causal, is_causal=True), dec2(x, mem, tgt_mask=causal))
    torch.testing.assert_close(got[0][~pad], ref[0][~pad], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-4, atol=1e-5)
    assert [e["kind"] for e in enc2.condense_edits] == ["mha_as_linears"]


def test_training_gradients_match():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, 4, batch_first=True)
    split = SplitAttention.from_mha(mha)
    q, k, v = _inputs(True, None)
    mha(q, k, v)[0].sum().backward()
    split(q, k, v)[0].sum().backward()
    g = mha.in_proj_weight.grad
    torch.testing.assert_close(torch.cat([split.q_proj.weight.grad, split.k_proj.weight.grad,
                                          split.v_proj.weight.grad]), g, rtol=1e-4, atol=1e-5)
