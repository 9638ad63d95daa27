"""Structured pruning on models nobody here wrote: Hugging Face text (encoder, GPT-2, Llama with
grouped-query attention, DeBERTa-v2's batched-matmul attention) and vision models (ViT,
Swin's windows and relative position bias, ConvNeXt), plus hand-written attention / SE / concat nets.

Random init (structure only). Each case checks: the forward works and keeps its output shape,
parameters really drop, the edit log replays bit-exactly on a fresh model, and where nothing but
Linear consumers read the removed channels (heads, FFN neurons) the pruned model equals the
unpruned one with those channels zeroed in every consumer (exact, not approximate).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.models.edits import replay_edits
from condense.prune import ChannelConfig, dependency_groups, prune

transformers = pytest.importorskip("transformers")


class Wrap(nn.Module):
    """forward(x) -> the logits (or last hidden state) of a transformers model."""

    def __init__(self, hf: nn.Module, key: str) -> None:
        super().__init__()
        self.hf, self.key = hf, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.hf(**{self.key: x})
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _text(cls_name: str, cfg_name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_name)(vocab_size=64, **kw)
    return Wrap(getattr(transformers, cls_name)(cfg), "input_ids").eval()


def _vision(cls_name: str, cfg_name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_name)(num_labels=5, **kw)
    return Wrap(getattr(transformers, cls_name)(cfg), "pixel_values").eval()


IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
IMG = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

CASES = {
    "bert": lambda: (_text("BertForSequenceClassification", "BertConfig", hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, num_labels=3), IDS),
    "llama": lambda: (_text("LlamaForCausalLM", "LlamaConfig", hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=64), IDS),
    "gpt2": lambda: (_text("GPT2LMHeadModel", "GPT2Config", n_embd=32, n_layer=2, n_head=4), IDS),
    "deberta-v2": lambda: (_text("DebertaV2ForSequenceClassification", "DebertaV2Config", hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=64), IDS),
    "swin": lambda: (_vision("SwinForImageClassification", "SwinConfig", image_size=32, patch_size=4, embed_dim=16,
                             depths=[2, 2], num_heads=[2, 4], window_size=2), IMG),
    "vit": lambda: (_vision("ViTForImageClassification", "ViTConfig", hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8), IMG),
    "convnext": lambda: (_vision("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16, 32, 64],
                                 depths=[1, 1, 1, 1]), IMG),
}


def _assert_replays(fresh: nn.Module, model: nn.Module, *inputs, **kw) -> None:
    """The edit log rebuilds the pruned architecture on an unpruned copy; the weights load
    strictly and the outputs are bit-identical."""
    replayed = replay_edits(fresh, model.condense_edits)
    replayed.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(replayed(*inputs, **kw), model(*inputs, **kw))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    yield


@pytest.mark.parametrize("name", list(CASES))
def test_half_the_channels_of_hugging_face_models(name):
    model, x = CASES[name]()
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        shape = model(x).shape
    n0 = _params(model)
    prune(model, ChannelConfig(ratio=0.5), example_inputs=x, recalibrate=False)
    with torch.no_grad():
        y = model(x)
    assert y.shape == shape
    assert _params(model) <= 0.6 * n0
    _assert_replays(fresh, model, x)


# heads (q/k/v/o coupled, GQA in whole key/value groups, GPT-2's fused c_attn) and FFN neurons
TARGETS = ["re:.*(query|q_proj|query_proj|c_attn|intermediate\\.dense|fc1|c_fc|gate_proj|pwconv1)$"]


@pytest.mark.parametrize("name", list(CASES))
def test_heads_and_ffn_cuts_equal_zeroing(name):
    model, x = CASES[name]()
    reference = copy.deepcopy(model)
    groups = {g.root: g for g in dependency_groups(reference, (x,))}
    prune(model, ChannelConfig(ratio=0.5, importance="random", seed=1), example_inputs=x, targets=TARGETS,
          recalibrate=False)
    (edit,) = model.condense_edits
    assert edit["params"]["groups"]
    for rec in edit["params"]["groups"]:
        g = groups[rec["root"]]
        gone = sorted(set(range(g.size)) - set(rec["keep"]))
        for m in g.members:
            if m.role == "in":
                cols = torch.tensor([m.offset + c * m.expand + j for c in gone for j in range(m.expand)])
                with torch.no_grad():
                    reference.get_parameter(m.param).index_fill_(m.dim, cols, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_grouped_query_attention_keeps_whole_key_value_groups_and_the_config_follows(tmp_path):
    model, x = CASES["llama"]()
    (g,) = [g for g in dependency_groups(model, (x,)) if g.root == "hf.model.layers.0.self_attn.q_proj"]
    assert g.size == 2 and g.prunable  # 2 key/value groups of 2 query heads each
    assert {m.module.rsplit(".", 1)[-1] for m in g.members} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    prune(model, ChannelConfig(ratio=0.5), example_inputs=x, recalibrate=False)
    cfg = model.hf.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.hidden_size) == (2, 1, 32, 16)
    model.hf.save_pretrained(tmp_path)
    opened = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(opened(input_ids=x).logits, model(x), atol=1e-6, rtol=1e-6)
    # a model built from the patched config replays the edit as a no-op and loads the weights
    rebuilt = replay_edits(Wrap(transformers.LlamaForCausalLM(cfg), "input_ids").eval(), model.condense_edits)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_uneven_widths_leave_the_config_alone():
    model, x = CASES["llama"]()
    before = model.hf.config.to_dict()
    prune(model, ChannelConfig(ratio=0.5, scope="global", importance="random"), example_inputs=x, recalibrate=False)
    with torch.no_grad():
        model(x)
    inter = {m.mlp.gate_proj.out_features for m in model.hf.model.layers}
    if len(inter) > 1:
        assert model.hf.config.intermediate_size == before["intermediate_size"]


class EncoderClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(self.proj(x)).mean(1))


def test_transformer_encoder_loses_heads_width_and_ffn_and_replays():
    """nn.MultiheadAttention becomes SplitAttention (same function), whose heads and width the engine
    cuts like any attention; the edit log ("mha_as_linears", then the cut) replays bit-exactly."""
    from condense.prune.mha import SplitAttention

    model = EncoderClassifier().eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(2, 5, 12)
    prune(model, ChannelConfig(ratio=0.5), example_inputs=x, recalibrate=False)
    layer = model.encoder.layers[0]
    assert isinstance(layer.self_attn, SplitAttention)
    assert (layer.self_attn.num_heads, layer.self_attn.q_proj.out_features, layer.linear1.out_features) == (2, 16, 32)
    assert layer.norm1.normalized_shape == (16,) and _params(model) < 0.35 * _params(fresh)
    assert [e["kind"] for e in model.condense_edits] == ["mha_as_linears", "prune_channels"]
    _assert_replays(fresh, model, x)


def test_multihead_attention_with_extra_key_bias_stays_frozen_with_its_reason():
    model = EncoderClassifier().eval()
    for layer in model.encoder.layers:
        layer.self_attn = nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True)
    x = torch.randn(2, 5, 12)
    frozen = [g for g in dependency_groups(model, (x,)) if not g.prunable]
    assert any("nn.MultiheadAttention 'encoder.layers.0.self_attn'" in g.reason for g in frozen)
    prune(model, ChannelConfig(ratio=0.5), example_inputs=x, recalibrate=False)
    assert type(model.encoder.layers[0].self_attn) is nn.MultiheadAttention
    assert model.encoder.layers[0].linear1.out_features == 32


class SEConcatNet(nn.Module):
    """Squeeze-excitation, a depthwise conv with a channel multiplier, concatenation and a
    channels-last LayerNorm (ConvNeXt style)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.se1, self.se2 = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.norm = nn.LayerNorm(40)
        self.head = nn.Linear(40, 10)

    def forward(self, x):
        y = self.dw(torch.relu(self.a(x)))
        y = y * torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        z = torch.cat([y, self.b(x)], 1).permute(0, 2, 3, 1)
        return self.head(self.norm(z).mean((1, 2)))


def test_squeeze_excitation_depthwise_multiplier_concat_and_channels_last_norm():
    torch.manual_seed(0)
    model = SEConcatNet().eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    prune(model, ChannelConfig(ratio=0.5), example_inputs=x[:1], recalibrate=False)
    assert (model.a.out_channels, model.dw.out_channels, model.dw.groups) == (8, 16, 8)
    assert model.se2.out_channels == 16 and model.se1.in_channels == 16 and model.norm.normalized_shape == (20,)
    assert model.head.in_features == 20
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    _assert_replays(fresh, model, x)


def test_a_forward_needing_more_inputs_names_the_argument():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, mask):
            return self.fc(x) * mask

    with pytest.raises(ConfigError, match="mask"):
        prune(TwoInputs(), ChannelConfig(ratio=0.5), example_inputs=torch.zeros(1, 4))


class TokensAndMask(nn.Module):
    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids, attention_mask):
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def test_a_batch_dict_of_keyword_inputs_prunes_and_replays():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, num_labels=2)
    model = TokensAndMask(transformers.BertForSequenceClassification(cfg)).eval()
    fresh = copy.deepcopy(model)
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    batch["attention_mask"][0, 5:] = 0
    prune(model, ChannelConfig(ratio=0.5), example_inputs=batch, recalibrate=False)
    (edit,) = model.condense_edits
    assert edit["params"]["input_names"] == ["input_ids", "attention_mask"]
    assert model.hf.bert.encoder.layer[0].attention.self.query.out_features == 16
    _assert_replays(fresh, model, **batch)


def test_deberta_with_a_batch_of_one_still_finds_its_heads():
    model, _ = CASES["deberta-v2"]()
    groups = dependency_groups(model, (IDS[:1],))
    heads = [g for g in groups if g.root.endswith("attention.self.query_proj")]
    assert len(heads) == 2 and all(g.prunable and g.size == 4 for g in heads)


class GroupedThenDepthwise(nn.Module):
    """A grouped conv feeding a depthwise conv (ResNeXt / MobileNet): units of whole conv groups."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.grouped = nn.Conv2d(32, 64, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.norm = nn.GroupNorm(8, 64)
        self.pw = nn.Conv2d(64, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.norm(self.dw(torch.relu(self.grouped(torch.relu(self.stem(x))))))
        return self.head(self.pw(x).mean((2, 3)))


def test_grouped_conv_then_depthwise_and_group_norm_remove_whole_groups():
    torch.manual_seed(0)
    model = GroupedThenDepthwise().eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    prune(model, ChannelConfig(ratio=0.5), example_inputs=x[:1], recalibrate=False)
    assert (model.stem.out_channels, model.grouped.groups, model.grouped.out_channels) == (16, 2, 32)
    assert (model.dw.groups, model.dw.out_channels, model.norm.num_groups, model.norm.num_channels) == (32, 32, 4, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    _assert_replays(fresh, model, x)


class TimmStyleAttention(nn.Module):
    """timm's Attention: fused qkv, and the output reshaped to the *input* width C."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 64), nn.Linear(64, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, C))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))


def test_forward_code_that_rebuilds_a_shape_keeps_those_groups_whole_with_a_warning():
    torch.manual_seed(0)
    model = TimmStyleAttention().eval()
    x = torch.randn(2, 5, 32)
    (heads,) = [g for g in dependency_groups(model, (x,)) if g.root == "qkv"]
    assert heads.prunable and heads.size == 4  # the graph alone says the heads could go
    with pytest.warns(UserWarning, match="kept 1 group.*qkv.*RuntimeError"):
        prune(model, ChannelConfig(ratio=0.5), example_inputs=x, recalibrate=False)
    assert model.qkv.out_features == 96 and model.fc1.out_features == 32  # heads kept, FFN cut
    with torch.no_grad():
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_gradient_importance_finds_a_dead_head_on_any_family(name):
    """Michel et al.'s head-gate gradient, for any group: a head whose output-projection columns
    are zero cannot change the output, scores 0, and is the one removed."""
    model, x = CASES[name]()
    attn = model.hf.bert.encoder.layer[0].attention if name == "bert" else model.hf.model.layers[0].self_attn
    out_proj = attn.output.dense if name == "bert" else attn.o_proj
    width = out_proj.in_features // (4 if name == "bert" else 2)  # BERT: 4 heads; Llama: 2 key/value groups
    with torch.no_grad():
        out_proj.weight[:, width:2 * width] = 0.0  # unit 1 of the first layer's heads group
    root = "hf.bert.encoder.layer.0.attention.self.query" if name == "bert" else "hf.model.layers.0.self_attn.q_proj"
    from condense.prune.importance import gradient_scores

    groups = [g for g in dependency_groups(model, (x,)) if g.root == root]
    scores = gradient_scores(model, groups, [x, x], batches=2)[root]
    assert scores[1] == 0 and (scores[[0] + list(range(2, len(scores)))] > 0).all()
    prune(model, ChannelConfig(ratio=0.0, ratios={root: 0.5 if name == "llama" else 0.25}, importance="gradient"),
          example_inputs=x, data=[x, x], recalibrate=False)
    (edit,) = model.condense_edits
    (rec,) = [r for r in edit["params"]["groups"] if r["root"] == root]
    assert 1 not in rec["keep"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_method_transformer_on_families_without_bert_blocks_goes_through_the_engine(tmp_path, family):
    from condense.models import build_model

    torch.manual_seed(0)
    if family == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64))
    hf.save_pretrained(tmp_path / family)
    model = build_model(f"hf:{tmp_path / family}")
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    with torch.no_grad():
        shape = model(**batch).shape
    with pytest.warns(UserWarning, match="head_scope='layer'"):
        prune(model, {"method": "transformer", "heads": 0.5, "ffn": 0.5}, data=[batch, batch])
    with torch.no_grad():
        assert model(**batch).shape == shape
    if family == "gpt2":
        assert model.hf.transformer.h[0].attn.c_attn.nf == 48 and model.hf.transformer.h[0].mlp.c_fc.nf == 64
    else:  # one of two key/value groups (2 query heads) and half the FFN in every layer; config follows
        cfg = model.hf.config
        assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (2, 1, 32)


def test_a_head_ratio_that_splits_a_key_value_group_is_refused(tmp_path):
    from condense.models import build_model

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64))
    hf.save_pretrained(tmp_path / "llama")
    model = build_model(f"hf:{tmp_path / 'llama'}")
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    with pytest.raises(ConfigError, match=r"'hf.model.layers.0.self_attn' has 4 query heads in 2 key/value groups "
                                          r"of 2; heads=0.25 .* multiple of 0.5"):
        prune(model, {"method": "transformer", "heads": 0.25, "head_scope": "layer"}, data=[batch, batch])


def test_layer_copy_refuses_the_stages_of_a_hierarchical_model():
    """ConvNeXt's stages are a list of same-class modules of different widths: not blocks to copy."""
    from condense.models.hf_layers import keep_layers

    model, _ = CASES["convnext"]()
    with pytest.raises(ConfigError, match="cannot find the transformer blocks of ConvNextForImageClassification"):
        keep_layers(model.hf, 1)
