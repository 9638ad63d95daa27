"""Layer-copy students and depth reduction on every transformer family in hf_layers' table
(issue 26 items 1-2): tiny random 3-layer configs of BERT, DistilBERT, ALBERT, DeBERTa-v2, GPT-2,
Llama and Qwen2 built with the installed transformers, saved as hf: folders. Nothing is downloaded.
"""
from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

from condense.core.errors import ConfigError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")

SMALL = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=3, vocab_size=100)
#: model_type -> (config class, its kwargs, the blocks' path in AutoModel, the config's layer-count field)
FAMILIES = {
    "bert": ("BertConfig", SMALL, "encoder.layer", "num_hidden_layers"),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_heads=4, hidden_dim=64, n_layers=3, vocab_size=100),
                   "transformer.layer", "n_layers"),
    "albert": ("AlbertConfig", dict(SMALL, embedding_size=16), "encoder.albert_layer_groups", "num_hidden_layers"),
    "deberta-v2": ("DebertaV2Config", SMALL, "encoder.layer", "num_hidden_layers"),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_head=4, n_layer=3, vocab_size=100, bos_token_id=1, eos_token_id=2),
             "h", "n_layer"),
    "llama": ("LlamaConfig", dict(SMALL, num_key_value_heads=2), "layers", "num_hidden_layers"),
    "qwen2": ("Qwen2Config", dict(SMALL, num_key_value_heads=2), "layers", "num_hidden_layers"),
}
DECODERS = ("gpt2", "llama")


def _config(family: str, **changes):
    import transformers

    name, kwargs, _, _ = FAMILIES[family]
    return getattr(transformers, name)(**{**kwargs, **changes})


def _auto(family: str, causal: bool = False, **changes):
    import transformers

    torch.manual_seed(0)
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    return cls.from_config(_config(family, **changes)).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family in FAMILIES:
        out[family] = root / family
        _auto(family).save_pretrained(out[family])
    return out


IDS = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
MASK = torch.ones_like(IDS)


def _hidden(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out if isinstance(out, torch.Tensor) else out[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_table_finds_each_familys_blocks(family) -> None:
    from condense.models.hf_layers import layer_layout

    lay = layer_layout(_auto(family))
    _, _, path, field = FAMILIES[family]
    assert (lay.path, lay.total, lay.count_field, lay.source) == (path, 3, field, "table")
    assert lay.shared == (family == "albert")
    if family in DECODERS:  # the head model: the same blocks under the base model's prefix
        assert layer_layout(_auto(family, causal=True)).path == ("transformer.h" if family == "gpt2" else "model.layers")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_student_from_teacher_copies_the_chosen_layers_and_round_trips(family, folders, tmp_path) -> None:
    import transformers

    from condense.models import build_model, student_from_teacher
    from condense.models.hf_layers import layer_layout

    teacher = build_model(f"hf:{folders[family]}")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = student_from_teacher(teacher, 2)
    _, _, _, field = FAMILIES[family]
    assert student.build_kwargs["layers"] == [0, 2] and getattr(student.hf.config, field) == 2
    assert getattr(teacher.hf.config, field) == 3
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # the teacher is untouched
    t_lay, s_lay = layer_layout(teacher.hf), layer_layout(student.hf)
    pairs = [(s_lay.blocks[0], t_lay.blocks[0])] if family == "albert" else \
        [(s_lay.blocks[0], t_lay.blocks[0]), (s_lay.blocks[1], t_lay.blocks[2])]
    for s_block, t_block in pairs:
        t_state = t_block.state_dict()
        for k, v in s_block.state_dict().items():
            assert torch.equal(v, t_state[k]) and v.data_ptr() != t_state[k].data_ptr(), k  # by value, not by reference
    if family == "albert":
        assert s_lay.total == 2 and len(s_lay.blocks) == 1  # the shared group now runs twice
    y = _hidden(student)
    assert y.shape == _hidden(teacher).shape and torch.isfinite(y).all()
    assert not torch.allclose(y, _hidden(teacher))  # one layer fewer runs
    student.hf.save_pretrained(tmp_path / "s")
    again = transformers.AutoModel.from_pretrained(tmp_path / "s").eval()
    assert getattr(again.config, field) == 2
    torch.testing.assert_close(_hidden(again), y, rtol=1e-5, atol=1e-5)


def test_layer_indices_and_per_layer_config_follow_the_kept_layers() -> None:
    from condense.models.hf_layers import keep_layers

    model = _auto("qwen2", causal=True, layer_types=["full_attention", "sliding_attention", "full_attention"],
                  use_sliding_window=True, sliding_window=4)
    assert keep_layers(model, [1, 2]) == [1, 2]
    assert model.config.layer_types == ["sliding_attention", "full_attention"] and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    distil = _auto("distilbert")
    keep_layers(distil, [2])
    assert distil.transformer.n_layers == 1 and distil.config.n_layers == 1


@pytest.mark.parametrize("family", DECODERS)
def test_a_copied_decoder_generates_the_same_with_and_without_cache(family) -> None:
    from condense.models.hf_layers import keep_layers

    teacher = _auto(family, causal=True)
    student = copy.deepcopy(teacher)
    keep_layers(student, [0, 2])
    attn = [getattr(b, "attn", None) or b.self_attn for b in (student.transformer.h if family == "gpt2"
                                                               else student.model.layers)]
    assert [a.layer_idx for a in attn] == [0, 1]  # renumbered: the KV cache is keyed by position
    prompt = IDS[:1, :5]
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = student.generate(prompt, attention_mask=torch.ones_like(prompt), use_cache=True, **kwargs)
        plain = student.generate(prompt, attention_mask=torch.ones_like(prompt), use_cache=False, **kwargs)
        assert torch.equal(cached, plain)
        # one step by hand: the next token's logits from the cache equal those of the full sequence
        full = student(input_ids=IDS[:1]).logits[:, -1]
        first = student(input_ids=IDS[:1, :-1], use_cache=True)
        key = "cache" if "cache" in first else "past_key_values"  # transformers >= 5.25 names it `cache`
        step = student(input_ids=IDS[:1, -1:], **{key: first[key]}, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)
    assert step.argmax() == full.argmax()


@pytest.mark.parametrize("family", ["gpt2", "llama", "distilbert", "albert"])
def test_build_model_with_layers_on_a_saved_folder(family, folders, tmp_path) -> None:
    from condense.artifacts import load, save
    from condense.models import build_model, student_from_teacher

    shallow = build_model(f"hf:{folders[family]}", layers=2)
    assert shallow.build_kwargs["layers"] == [0, 2]
    ref = student_from_teacher(build_model(f"hf:{folders[family]}"), 2)
    torch.testing.assert_close(_hidden(shallow), _hidden(ref))
    out = save(shallow, tmp_path / "m")
    back = load(out)
    torch.testing.assert_close(_hidden(back), _hidden(shallow))
    with pytest.raises(ConfigError, match="between 1 and"):
        build_model(f"hf:{folders[family]}", layers=4)


@pytest.mark.parametrize("family", ["gpt2", "llama", "distilbert", "deberta-v2"])
def test_depth_reduction_patches_the_config(family, folders, tmp_path) -> None:
    import json

    import transformers

    from condense.artifacts import META_NAME, load, save
    from condense.lowrank.depth import droppable_blocks, reduce_depth
    from condense.models import build_model

    model = build_model(f"hf:{folders[family]}")
    names = droppable_blocks(model)
    assert len(names) == 3 and names[1].endswith(".1")
    reduce_depth(model, {"blocks": [names[1]]})
    _, _, _, field = FAMILIES[family]
    assert getattr(model.hf.config, field) == 2 and not getattr(model, "condense_edits", None)
    ref = build_model(f"hf:{folders[family]}", layers=[0, 2])
    torch.testing.assert_close(_hidden(model), _hidden(ref))
    out = save(model, tmp_path / "m")
    assert json.loads((out / META_NAME).read_text())["hf"]["transformers_loadable"] is True
    opened = transformers.AutoModel.from_pretrained(out).eval()
    torch.testing.assert_close(_hidden(opened), _hidden(model), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_hidden(load(out)), _hidden(model))


def test_depth_by_measurement_on_a_decoder(folders) -> None:
    from condense.lowrank.depth import reduce_depth
    from condense.models import build_model

    model = build_model(f"hf:{folders['llama']}")
    ref = build_model(f"hf:{folders['llama']}")
    reduce_depth(model, {"drop": 1}, eval_fn=lambda m: -float((_hidden(m) - _hidden(ref)).pow(2).mean()))
    report = model.condense_depth_report
    assert len(report["dropped"]) == 1 and len(report["metric_without"]) == 3
    assert model.hf.config.num_hidden_layers == 2 and [b.self_attn.layer_idx for b in model.hf.layers] == [0, 1]


def test_albert_shares_its_layer_and_says_so(folders) -> None:
    from condense.lowrank.depth import reduce_depth
    from condense.models import build_model
    from condense.models.hf_layers import encoder_layers, keep_layers

    model = build_model(f"hf:{folders['albert']}")
    with pytest.raises(ConfigError, match="shared layer group.*layers=k"):
        encoder_layers(model.hf)
    with pytest.raises(ConfigError, match="shared layer group.*layers=k"):
        reduce_depth(model, {"drop": 1}, eval_fn=lambda m: 0.0)
    grouped = _auto("albert", num_hidden_groups=3)
    with pytest.raises(ConfigError, match="3 shared layer groups"):
        keep_layers(grouped, 2)


def test_unknown_families_are_searched_or_named(monkeypatch) -> None:
    from condense.models import hf_layers
    from condense.models.hf_layers import keep_layers, layer_layout

    monkeypatch.delitem(hf_layers.LAYER_PATHS, "llama")  # as if llama were not in the table
    model = _auto("llama", causal=True)
    lay = layer_layout(model)
    assert (lay.path, lay.source, lay.total) == ("model.layers", "search", 3)
    keep_layers(model, 1)
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    flat = torch.nn.Module()
    flat.config = type("Cfg", (), {"model_type": "mystery", "num_hidden_layers": 4})()
    flat.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])
    with pytest.raises(ConfigError, match="model_type 'mystery'.*targets="):
        layer_layout(flat)


def test_vit_keeps_layers_and_reopens(tmp_path) -> None:
    import transformers

    from condense.models.hf_layers import keep_layers, layer_layout

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=3,
                                 image_size=16, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(cfg).eval()
    assert layer_layout(model).source == "table"
    keep_layers(model, [1])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    assert again.config.num_hidden_layers == 1
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values=x).logits, y)
