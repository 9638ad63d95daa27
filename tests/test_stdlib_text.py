"""The standard library's prose as data: paragraphs parsed with ast, the package task split by
module (test modules unseen), the JSONL round trip, and the CLI / recipe path of a small BERT."""
from __future__ import annotations

import json

import numpy as np
import pytest

import condense
from condense.core.errors import ConfigError
from condense.data import stdlib_text
from condense.data.lazy import group_split_positions
from condense.data.loader import as_source


def test_paragraphs_are_prose_with_package_and_module():
    paras = stdlib_text.stdlib_paragraphs()
    assert len(paras) > 2000
    r = paras[0]
    assert set(r) == {"text", "package", "module"} and r["module"].split(".")[0] == r["package"]
    assert len({p["text"].lower() for p in paras}) == len(paras)  # deduplicated
    assert all(40 <= len(p["text"]) <= 600 for p in paras)
    assert not any(p["module"].split(".")[0] in ("test", "idle_test") for p in paras)


def test_group_split_keeps_groups_whole_and_fractions_near():
    rng = np.random.default_rng(0)
    groups = [f"g{i}" for i in rng.integers(0, 40, 2000)]
    y = np.array([int(g[1:]) % 4 for g in groups])  # a group's samples share its class
    pos = group_split_positions(y, groups, name="t", seed=0)
    g = np.array(groups)
    parts = [set(g[p]) for p in (pos.train, pos.val, pos.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([pos.train, pos.val, pos.test]).tolist()) == list(range(2000))
    assert 0.12 <= len(pos.test) / 2000 <= 0.3 and 0.04 <= len(pos.val) / 2000 <= 0.2
    again = group_split_positions(y, groups, name="t", seed=0)
    assert np.array_equal(again.test, pos.test)
    with pytest.raises(ConfigError, match="class 1 has 2 group"):
        group_split_positions(np.array([0, 0, 0, 1, 1]), ["a", "b", "c", "d", "e"], name="t")


def test_package_task_splits_by_module(tmp_path):
    pytest.importorskip("tokenizers")
    from condense.models.hf_folder import packaged_model_dir

    s = condense.load_dataset("stdlib-text", task="package", classes=4, limit=800, max_length=32,
                              tokenizer=str(packaged_model_dir()))
    assert s.num_classes == 4 and s.train.labelled and s.info["split_by"] == "group"
    recs = stdlib_text._limit(stdlib_text.package_task_records(4), 800, 0)
    modules = np.array([r["module"] for r in recs])
    test_mods = set(modules[as_source(s.test).ids()])
    train_mods = set(modules[as_source(s.train).ids()])
    assert test_mods and not test_mods & train_mods  # the test modules are unseen in training
    path = stdlib_text.write_stdlib_corpus(tmp_path / "c.jsonl", task="package", classes=4, limit=800)
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"text", "label", "module"}
    again = condense.load_dataset("text", path=str(path), tokenizer=str(packaged_model_dir()), label_field="label",
                                  group_field="module", max_length=32)
    assert again.train.fingerprint() == s.train.fingerprint()  # the file gives the same split
    with pytest.raises(ConfigError, match="unknown task 'packages'"):
        condense.load_dataset("stdlib-text", task="packages")


def _fake_package(root, stdlib_text_copy):
    pkg = root / "condense_fake_docs"
    (pkg / "tests").mkdir(parents=True)
    prose = "This paragraph explains how the frobnicator combines several widgets into one tidy bundle."
    (pkg / "__init__.py").write_text(f'"""{prose}\n\n{stdlib_text_copy}\n"""\n')
    (pkg / "sub.py").write_text('def f():\n    """Return the number of widgets that the bundle holds after it was packed."""\n')
    (pkg / "tests" / "test_x.py").write_text('"""A test module whose words must never become training text here."""\n')
    return pkg


def test_extra_packages_join_the_training_split_only(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    from condense.models.hf_folder import packaged_model_dir

    copy_of_stdlib = stdlib_text.stdlib_paragraphs()[0]["text"]
    _fake_package(tmp_path, copy_of_stdlib)
    monkeypatch.syspath_prepend(str(tmp_path))
    paras = stdlib_text.package_paragraphs(["condense_fake_docs"], seen={copy_of_stdlib.lower()})
    assert [p["module"] for p in paras] == ["condense_fake_docs", "condense_fake_docs.sub"]  # copy + tests skipped
    kw = {"task": "corpus", "limit": 300, "max_length": 32, "tokenizer": str(packaged_model_dir())}
    base = condense.load_dataset("stdlib-text", **kw)
    more = condense.load_dataset("stdlib-text", **kw, extra_packages=["condense_fake_docs"])
    assert more.info["extra_paragraphs"] == {"condense_fake_docs": 2} and more.info["paragraphs"] == 300
    assert len(more.train) == len(base.train) + 2
    assert more.val.fingerprint() == base.val.fingerprint() and more.test.fingerprint() == base.test.fingerprint()
    assert sorted(as_source(more.train).ids())[-2:] == [300, 301]  # the extra texts, in training only
    with pytest.raises(ConfigError, match="'no_such_pkg_xyz' is not installed"):
        condense.load_dataset("stdlib-text", **kw, extra_packages=["no_such_pkg_xyz"])
    with pytest.raises(ConfigError, match="needs task='corpus'"):
        condense.load_dataset("stdlib-text", **{**kw, "task": "package"}, extra_packages=["condense_fake_docs"])
    with pytest.raises(ConfigError, match="extra_limit must be an integer"):
        condense.load_dataset("stdlib-text", **kw, extra_packages=["condense_fake_docs"], extra_limit=3)
