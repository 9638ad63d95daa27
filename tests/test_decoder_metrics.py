"""Decoder metrics: tiny GPT-2 and Llama causal LMs saved as hf: folders (with a word-level
tokenizer written here), scored by `condense.evaluate`: perplexity, token agreement, token KL."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import condense
from condense.data.loader import as_source
from condense.evaluate import decoder_metrics, evaluate
from condense.models import build_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

VOCAB = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "the", "cat", "dog", "sat", "ran", "on", "mat",
         "a", "big", "red", "##s", "very"]
PAD = 3
SENTENCES = ["the cat sat", "a dog ran", "the big red cat sat on the mat", "dogs ran", "cats",
             "the very big dog sat on a red mat", "a cat", "the dog"]


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[PAD]", "unk_token": "[UNK]"}))


def _config(family: str):
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _folder(root: Path, family: str, seed: int) -> Path:
    folder = root / f"{family}-{seed}"
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(_config(family)).save_pretrained(folder)
    _tokenizer(folder)
    return folder


FAMILIES = ("gpt2", "llama")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("decoders")
    return {(f, s): _folder(root, f, s) for f in FAMILIES for s in (0, 1)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    path.write_text("".join(json.dumps({"text": SENTENCES[i % len(SENTENCES)]}) + "\n" for i in range(24)))
    return path


def _hand_ppl(model, batch) -> float:
    """exp of the mean cross-entropy of logits[t] against ids[t+1] over pairs with both real."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).double()
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    keep = (mask[:, :-1] & mask[:, 1:]).reshape(-1)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return math.exp(float(ce[keep].mean()))


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_folder_is_a_decoder_returning_next_token_logits(folders, family):
    model = build_model(f"hf:{folders[family, 0]}")
    assert model.task == "causal-lm" and model.build_kwargs["task"] == "causal-lm"
    ids = torch.tensor([[5, 6, 8, 3]])
    out = model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0]]))
    assert out.shape == (1, 4, 32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folders[family, 0]).eval()
    with torch.no_grad():
        torch.testing.assert_close(out, ref(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0]])).logits)
    # the backbone stays reachable by asking for it
    assert build_model(f"hf:{folders[family, 0]}", task="encoder")(input_ids=ids, attention_mask=torch.ones_like(ids)
                                                                   ).shape == (1, 4, 32)


@pytest.mark.parametrize("family", FAMILIES)
def test_perplexity_is_exp_of_masked_shifted_cross_entropy(folders, corpus, family):
    folder = folders[family, 0]
    model = build_model(f"hf:{folder}")
    splits = condense.load_dataset("text", path=corpus, tokenizer=folder, val_fraction=0.0, test_fraction=0.5)
    batch = as_source(splits.test).head(len(splits.test))
    assert (batch["attention_mask"] == 0).any()  # padded: the mask matters
    m = evaluate(model, splits.test)
    assert m["perplexity"] == pytest.approx(_hand_ppl(model, batch), rel=1e-5, abs=1e-5)
    assert m["loss"] == pytest.approx(math.log(m["perplexity"]), abs=1e-9)
    assert m["n"] == len(splits.test) and m["runtime"] == "torch"
    assert m["tokens"] == int((batch["attention_mask"][:, :-1] * batch["attention_mask"][:, 1:]).sum())
    # batch size does not move the number (per-batch padding differs)
    assert evaluate(model, splits.test, batch_size=3)["perplexity"] == pytest.approx(m["perplexity"], rel=1e-9)
    # a random 32-token model is near uniform: perplexity close to the vocabulary size
    assert 10 < m["perplexity"] < 100


@pytest.mark.parametrize("family", FAMILIES)
def test_agreement_with_itself_and_with_another_model(folders, corpus, family):
    model = build_model(f"hf:{folders[family, 0]}")
    other = build_model(f"hf:{folders[family, 1]}")
    splits = condense.load_dataset("text", path=corpus, tokenizer=folders[family, 0], val_fraction=0.0)
    same = evaluate(model, splits.test, reference=model)
    assert same["token_agreement"] == 1.0
    assert same["token_kl"] == pytest.approx(0.0, abs=1e-12)
    assert same["reference"]["token_agreement"] == 1.0
    diff = evaluate(other, splits.test, reference=model)
    assert diff["token_agreement"] < 1.0
    assert diff["token_kl"] > 0
    assert diff["positions"] == int(as_source(splits.test).head(len(splits.test))["attention_mask"].sum())


def _tokens(ids: torch.Tensor, mask: torch.Tensor) -> DataLoader:
    """Token batches as a DataLoader of dicts (one batch of all rows)."""
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask, strict=True)]
    return DataLoader(rows, batch_size=len(rows))


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_positions_are_ignored(folders, family):
    model = build_model(f"hf:{folders[family, 0]}")
    other = build_model(f"hf:{folders[family, 1]}")
    ids = torch.tensor([[5, 6, 8, 10, 5, 11], [12, 7, 9, PAD, PAD, PAD], [5, 13, 14, 6, PAD, PAD]])
    mask = (ids != PAD).long()
    noisy = ids.clone()
    noisy[mask == 0] = torch.tensor([20, 0, 31, 17, 9])  # other ids under mask 0
    a = decoder_metrics(other, _tokens(ids, mask), reference=model)
    b = decoder_metrics(other, _tokens(noisy, mask), reference=model)
    for k in ("perplexity", "token_agreement", "token_kl"):
        assert a[k] == pytest.approx(b[k], rel=1e-6), k
    # a sequence padded further does not change anything either
    c = decoder_metrics(other, _tokens(torch.cat([ids, torch.full((3, 2), PAD)], 1), F.pad(mask, (0, 2))),
                        reference=model)
    for k in ("perplexity", "token_agreement", "token_kl"):
        assert a[k] == pytest.approx(c[k], rel=1e-6), k


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_of_a_decoder_is_scored_the_same(folders, corpus, family, tmp_path):
    pytest.importorskip("onnxruntime")
    from condense.data.loader import example_inputs
    from condense.evaluate.decoder import is_decoder
    from condense.export import export_onnx

    model = build_model(f"hf:{folders[family, 0]}")
    splits = condense.load_dataset("text", path=corpus, tokenizer=folders[family, 0], val_fraction=0.0)
    path = export_onnx(model, example_inputs(splits.test, 1), tmp_path / "m.onnx").path
    assert is_decoder(path) and not is_decoder(tmp_path / "missing.onnx")
    torch_m = evaluate(model, splits.test)
    onnx_m = evaluate(path, splits.test, reference=model)
    assert onnx_m["runtime"] == "onnxruntime" and onnx_m["reference"]["runtime"] == "torch"
    assert onnx_m["perplexity"] == pytest.approx(torch_m["perplexity"], rel=1e-5)
    assert onnx_m["token_agreement"] == 1.0 and onnx_m["token_kl"] < 1e-9


def test_condense_prune_heads_on_a_decoder_folder(folders, corpus, tmp_path, capsys):
    """`condense prune --heads --ffn` on GPT-2: the dependency engine cuts heads (fused c_attn) and FFN,
    recovery distils next-token logits from the unpruned model, the summary shows perplexity."""
    from condense.cli import main

    out = tmp_path / "pruned"
    folder = folders["gpt2", 0]
    code = main(["prune", f"hf:{folder}", "--heads", "0.5", "--ffn", "0.5", "--data", "text", "--data-arg",
                 f"path={corpus}", "--data-arg", f"tokenizer={folder}", "--epochs", "1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "before pruning: test perplexity" in text and "token agreement with the teacher" in text
    model = condense.load(out)
    block = model.hf.transformer.h[0]
    assert (block.attn.c_attn.nf, block.mlp.c_fc.nf) == (48, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_condense_quantize_weight_only_on_a_decoder_reports_perplexity(folders, corpus, tmp_path, capsys, family):
    """4-bit weight-only on token batches: the summary scores the decoder by perplexity and token
    agreement with the float model (not accuracy), and the ONNX file matches PyTorch."""
    from condense.cli import main

    folder = folders[family, 0]
    code = main(["quantize", f"hf:{folder}", "--method", "weight_only", "--bits", "4", "--data", "text",
                 "--data-arg", f"path={corpus}", "--data-arg", f"tokenizer={folder}", "--latency-batches",
                 "--json", "--out", str(tmp_path / "q")])
    assert code == 0
    s = json.loads(capsys.readouterr().out)
    q = s["quality"]
    assert q["metric"] == "perplexity" and s["accuracy"]["fp32"] is None and s["drop_pt"] is None
    assert q["quantized_onnxruntime"] == pytest.approx(q["quantized_torch"], rel=1e-4)
    assert 0.5 < q["quantized_torch"] / q["fp32"] < 2 and 0.0 <= q["token_agreement"] <= 1.0
    assert s["agreement"]["top1_pct"] == 100.0 and s["size_ratio"] < 0.6


def test_static_int8_on_token_batches_names_the_methods_that_fit(folders, corpus, tmp_path, capsys):
    from condense.cli import main

    folder = folders["gpt2", 0]
    code = main(["quantize", f"hf:{folder}", "--method", "static", "--data", "text", "--data-arg", f"path={corpus}",
                 "--data-arg", f"tokenizer={folder}", "--out", str(tmp_path / "q")])
    assert code != 0
    assert "method 'transformer'" in capsys.readouterr().err


@pytest.mark.parametrize("family", FAMILIES)
def test_vocab_trim_of_a_decoder_trims_its_tied_head_too(folders, corpus, tmp_path, family):
    """Trimming a causal LM: the word embedding and the (tied) LM head keep the rows of the corpus'
    tokens, the head stays tied, kept tokens score exactly as before and trimmed ones get
    probability 0; save / load and ONNX give the same logits."""
    from condense.data.loader import collect
    from condense.prune import VocabConfig
    from condense.prune.vocab import TrimmedEmbedding, TrimmedLMHead

    folder = folders[family, 0]
    model = build_model(f"hf:{folder}").eval()
    splits = condense.load_dataset("text", path=str(corpus), tokenizer=str(folder))
    batch = {"input_ids": collect(splits.test, "input_ids"), "attention_mask": collect(splits.test, "attention_mask")}
    with torch.no_grad():
        before = model(**batch)
    tied_before = model.hf.get_output_embeddings().weight is model.hf.get_input_embeddings().weight
    trimmed = condense.prune(model, VocabConfig(), data=splits.train)
    emb, head = trimmed.hf.get_input_embeddings(), trimmed.hf.get_output_embeddings()
    assert isinstance(emb, TrimmedEmbedding) and isinstance(head, TrimmedLMHead)
    assert (head.weight is emb.embedding.weight) == tied_before
    kept = head.kept
    assert len(kept) < 32 and trimmed.condense_vocab_report["lm_head"]["tied"] == tied_before
    with torch.no_grad():
        after = trimmed(**batch)
    assert after.shape == before.shape
    seen = set(batch["input_ids"][batch["attention_mask"].bool()].tolist())
    if seen <= set(kept.tolist()):  # held-out text made of kept tokens: the kept tokens' logits are unchanged
        torch.testing.assert_close(after[..., kept], before[..., kept], rtol=1e-5, atol=1e-5)
    gone = torch.ones(before.shape[-1], dtype=torch.bool)
    gone[kept] = False
    assert gone.any() and bool((after[..., gone] == torch.finfo(after.dtype).min).all())
    condense.save(trimmed, tmp_path / "t")
    loaded = condense.load(tmp_path / "t")
    lh = loaded.hf.get_output_embeddings()
    assert (lh.weight is loaded.hf.get_input_embeddings().embedding.weight) == tied_before
    with torch.no_grad():
        assert torch.equal(loaded(**batch), after)
    m = evaluate(loaded, splits.test, reference=build_model(f"hf:{folder}").eval())
    assert math.isfinite(m["perplexity"]) and 0.0 <= m["token_agreement"] <= 1.0


def test_a_decoder_runs_the_whole_recipe_chain(folders, tmp_path):
    """teacher -> a one-layer copy distilled on next-token logits -> heads / FFN pruned with
    distillation recovery -> transformer int8 ONNX: every stage row carries perplexity and
    agreement with the teacher, and the run's table prints perplexity."""
    from condense.demo import format_table
    from condense.recipes import run_recipe

    folder = folders["gpt2", 0]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{SENTENCES[i % 8]} {SENTENCES[(3 * i) % 8]}"}) + "\n"
                              for i in range(80)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
name: decoder-chain
seed: 0
data: {{name: text, path: {corpus}, tokenizer: {folder}}}
measure: {{batch_sizes: [1], repeats: 3}}
stages:
  - {{name: teacher, kind: evaluate, model: {{name: "hf:{folder}"}}}}
  - name: student
    kind: distill
    model: {{name: "hf:{folder}", kwargs: {{layers: 1}}}}
    teacher: teacher
    train: {{epochs: 1, batch_size: 16}}
  - name: pruned
    kind: prune
    config: {{method: transformer, heads: 0.5, ffn: 0.5, importance: weight, head_scope: layer}}
    recover: {{method: distill}}
    train: {{epochs: 1, batch_size: 16}}
  - {{name: int8, kind: quantize, config: {{method: transformer}}}}
""")
    report = run_recipe(recipe, tmp_path / "run", quiet=True)
    rows = {r["stage"]: r for r in report["stages"]}
    assert list(rows) == ["teacher", "student", "pruned", "int8"]
    assert all(math.isfinite(r["perplexity"]) and r["accuracy"] is None for r in rows.values())
    assert rows["pruned"]["params"] < rows["student"]["params"] < rows["teacher"]["params"]
    assert rows["int8"]["bytes_onnx"] < 0.5 * rows["pruned"]["bytes_onnx"]
    assert 0.0 <= rows["int8"]["token_agreement"] <= 1.0
    assert "ppl" in format_table(report["stages"], report.get("latency_pass")).splitlines()[0]
