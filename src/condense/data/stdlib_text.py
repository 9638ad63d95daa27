"""Real English text that ships with every Python: the standard library's own prose.

`stdlib_paragraphs()` reads the docstrings of the standard library's modules, classes and
functions with `ast` (the files are parsed, never imported or executed) and splits them into
paragraphs; `pydoc_topics()` adds the language reference sections pydoc serves (`help("if")`),
from `pydoc_data.topics`. Nothing is downloaded: the corpus is whatever this Python installation
holds, so it differs slightly between Python versions (the version is recorded in `info`).

Two uses, both as the `stdlib-text` source (`condense.load_dataset("stdlib-text", ...)`):

- `task="corpus"`: every paragraph, unlabelled: a transfer set for distilling a sentence encoder;
- `task="package"`: classify a docstring paragraph by the top-level package it comes from
  (`asyncio`, `email`, `xml`, ...): the `classes` packages with the most paragraphs among those
  with at least `min_modules` modules. Split by module (`group_split_positions`): the test
  modules are unseen in training, so the model must generalise from a package's vocabulary, not
  memorise its modules.

More training text (`extra_packages=["numpy", "scipy"]`, task "corpus"): the docstrings of
installed third-party packages, read the same way; they join the training split only, so the
held-out paragraphs are the same standard-library ones with or without them.

`write_stdlib_corpus(path, task=...)` writes the same records as JSON lines (`text`, `label`,
`module`) for the CLI's `--data text:FILE` and for inspection.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import sys
import sysconfig
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from condense.core.errors import ConfigError, did_you_mean
from condense.core.io import atomic_write_text
from condense.data.base import Splits
from condense.data.text import text_splits
from condense.data.tokenizer import load_tokenizer
from condense.models.hf_folder import packaged_model_dir

TASKS = ("corpus", "package")
SKIP_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def _clean(paragraph: str) -> str:
    return " ".join(paragraph.split())


def _is_prose(text: str, min_chars: int, max_chars: int) -> bool:
    """Mostly letters and spaces, long enough, a few words: no code listings, tables or signatures."""
    if not min_chars <= len(text) <= max_chars or len(text.split()) < 6:
        return False
    return sum(c.isalpha() or c == " " for c in text) >= 0.8 * len(text)


def docstring_paragraphs(root: Path, files: Sequence[Path], *, min_chars: int = 40, max_chars: int = 600,
                         seen: set[str] | None = None) -> list[dict[str, str]]:
    """Docstring paragraphs of the Python `files` under `root` (parsed with `ast`, never
    imported): `{"text", "package", "module"}` records in file order, module names dotted from
    `root`. Paragraphs whose lower-cased text is in `seen` are skipped, and new ones added to it."""
    seen = set() if seen is None else seen
    out: list[dict[str, str]] = []
    for f in files:
        rel = f.relative_to(root)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files are templates or use another encoding: not prose we need
        for node in _statements(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in re.split(r"\n\s*\n", doc):
                text = _clean(para)
                if _is_prose(text, min_chars, max_chars) and text.lower() not in seen:
                    seen.add(text.lower())
                    out.append({"text": text, "package": rel.parts[0].removesuffix(".py"), "module": module})
    return out


def _statements(tree: ast.AST):
    """`ast.walk`'s nodes in its order (breadth first), without descending into expressions: a
    docstring belongs to a module, class or function, and none of those sits inside an expression
    (a third of the cost of reading the standard library was walking expression nodes)."""
    queue = deque([tree])
    while queue:
        node = queue.popleft()
        yield node
        queue.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt | ast.excepthandler | ast.match_case))


def _python_files(root: Path, skip: frozenset[str]) -> list[Path]:
    """The .py files under `root`, sorted, never entering a folder named in `skip` (the standard
    library's folder holds site-packages: walking it and filtering afterwards cost seconds)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


def stdlib_paragraphs(min_chars: int = 40, max_chars: int = 600) -> tuple[dict[str, str], ...]:
    """Docstring paragraphs of the standard library: `{"text", "package", "module"}` records,
    deduplicated (case-insensitively), in file order. Test suites and site-packages are skipped.
    Read once per (min_chars, max_chars), however the arguments are passed."""
    return _stdlib_paragraphs(int(min_chars), int(max_chars))


@functools.lru_cache(maxsize=4)
def _stdlib_paragraphs(min_chars: int, max_chars: int) -> tuple[dict[str, str], ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ConfigError(f"stdlib-text: the standard library's sources are not at {root}")
    return tuple(docstring_paragraphs(root, _python_files(root, SKIP_PARTS), min_chars=min_chars,
                                      max_chars=max_chars))


def package_paragraphs(packages: Sequence[str], *, min_chars: int = 40, max_chars: int = 600,
                       seen: set[str] | None = None) -> list[dict[str, str]]:
    """Docstring paragraphs of installed top-level packages (`["numpy", "scipy"]`), found with
    `importlib.util.find_spec` (located, not imported); their tests and vendored copies
    (`_vendor`) are skipped. A package that is not installed is a ConfigError naming it."""
    seen = set() if seen is None else seen
    out: list[dict[str, str]] = []
    for name in packages:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"stdlib-text: extra_packages entries are top-level package names, got {name!r}")
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not (spec.submodule_search_locations or spec.origin):
            raise ConfigError(f"stdlib-text: extra_packages: {name!r} is not installed in this Python")
        if spec.submodule_search_locations:
            where = Path(next(iter(spec.submodule_search_locations)))
            files = _python_files(where, SKIP_PARTS | {"testing", "_vendor"})
        else:
            where = Path(spec.origin or "")
            files = [where] if where.suffix == ".py" else []
        if not files:
            raise ConfigError(f"stdlib-text: extra_packages: {name!r} has no Python sources at {where}")
        out += docstring_paragraphs(where.parent, files, min_chars=min_chars, max_chars=max_chars, seen=seen)
    return out


def pydoc_topics(min_chars: int = 40, max_chars: int = 600) -> list[dict[str, str]]:
    """Paragraphs of the language reference topics pydoc serves (`pydoc_data.topics`)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a stripped Python without pydoc_data
        return []
    out = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            text = _clean(para)
            if _is_prose(text, min_chars, max_chars):
                out.append({"text": text, "package": "pydoc_topics", "module": f"pydoc_topics.{name}"})
    return out


def package_task_records(classes: int = 8, min_modules: int = 5, min_chars: int = 40,
                         max_chars: int = 600) -> list[dict[str, str]]:
    """Records of the `classes` largest packages having >= `min_modules` modules; label = package."""
    paras = stdlib_paragraphs(min_chars, max_chars)
    modules: dict[str, set[str]] = {}
    for r in paras:
        modules.setdefault(r["package"], set()).add(r["module"])
    counts = Counter(r["package"] for r in paras if len(modules[r["package"]]) >= min_modules)
    if len(counts) < 2 or classes < 2:
        raise ConfigError(f"stdlib-text: classes must be >= 2 and this Python has {len(counts)} packages with "
                          f">= {min_modules} modules")
    chosen = {p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:classes]}
    return [{"text": r["text"], "label": r["package"], "module": r["module"]} for r in paras if r["package"] in chosen]


def corpus_records(min_chars: int = 40, max_chars: int = 600, topics: bool = True) -> list[dict[str, str]]:
    """Every docstring paragraph (+ the pydoc topics), unlabelled; `module` kept for grouping."""
    recs = [{"text": r["text"], "module": r["module"]} for r in stdlib_paragraphs(min_chars, max_chars)]
    if topics:
        seen = {r["text"].lower() for r in recs}
        recs += [{"text": r["text"], "module": r["module"]} for r in pydoc_topics(min_chars, max_chars)
                 if r["text"].lower() not in seen]
    return recs


def _records(task: str, classes: int, min_modules: int, min_chars: int, max_chars: int) -> list[dict[str, str]]:
    if task not in TASKS:
        raise ConfigError(f"stdlib-text: unknown task {task!r}{did_you_mean(task, TASKS)}; expected one of "
                          f"{', '.join(TASKS)}")
    if task == "package":
        return package_task_records(classes, min_modules, min_chars, max_chars)
    return corpus_records(min_chars, max_chars)


def _limit(records: list[dict[str, str]], limit: int | None, seed: int, field: str = "limit") -> list[dict[str, str]]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 10):
        raise ConfigError(f"stdlib-text: {field} must be an integer >= 10 or null, got {limit!r}")
    if limit is None or limit >= len(records):
        return records
    keep = np.sort(np.random.default_rng([seed, 3]).permutation(len(records))[:limit])
    return [records[i] for i in keep]


def write_stdlib_corpus(path: str | Path, *, task: str = "corpus", classes: int = 8, min_modules: int = 5,
                        limit: int | None = None, seed: int = 0, min_chars: int = 40, max_chars: int = 600) -> Path:
    """Write the records as JSON lines (`text`, [`label`], `module`), atomically; returns the path.

    Read it back with `load_dataset("text", path=..., tokenizer=..., group_field="module"[,
    label_field="label"])` to get the same splits as the `stdlib-text` source.
    """
    recs = _limit(_records(task, classes, min_modules, min_chars, max_chars), limit, seed)
    out = Path(path)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return out


def default_tokenizer() -> Path:
    """The tokenizer of the all-MiniLM-L6-v2 folder of the `nlp` extra (clear error without it)."""
    return packaged_model_dir()


def load_stdlib_text(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labelled_fraction: float | None = None,
    task: str = "corpus",
    tokenizer: str | Path | None = None,
    max_length: int | None = 128,
    classes: int = 8,
    min_modules: int = 5,
    limit: int | None = None,
    min_chars: int = 40,
    max_chars: int = 600,
    extra_packages: Sequence[str] | None = None,
    extra_limit: int | None = None,
) -> Splits:
    """The standard library's prose as a text source (see the module docstring).

    `tokenizer`: a local Hugging Face folder (default: the MiniLM folder of the `nlp` extra).
    `limit`: keep a seeded sample of this many paragraphs (quick runs). Splits keep whole modules
    together in both tasks.
    `extra_packages` (task "corpus"): more training text, the docstring paragraphs of these
    installed packages (`package_paragraphs`; `extra_limit`: a seeded sample of them). They join
    the training split only: val and test stay the standard library's (the same as without
    them), and a paragraph whose text is anywhere in the standard-library corpus is dropped, so
    a vendored copy of a held-out module cannot leak into training.
    """
    recs = _limit(_records(task, classes, min_modules, min_chars, max_chars), limit, seed)
    if labelled_fraction is not None and task != "package":
        raise ConfigError("stdlib-text: labelled_fraction needs labels (task='package')")
    extra: list[dict[str, str]] = []
    if extra_packages:
        if task != "corpus":
            raise ConfigError("stdlib-text: extra_packages adds unlabelled training text; it needs task='corpus'")
        if isinstance(extra_packages, str):
            extra_packages = [extra_packages]
        seen = {r["text"].lower() for r in _records(task, classes, min_modules, min_chars, max_chars)}
        extra = _limit(package_paragraphs(list(extra_packages), min_chars=min_chars, max_chars=max_chars, seen=seen),
                       extra_limit, seed, "extra_limit")
        recs = recs + extra
    tok = load_tokenizer(default_tokenizer() if tokenizer is None else tokenizer, max_length=max_length)
    labels = [r["label"] for r in recs] if task == "package" else None
    return text_splits(
        [r["text"] for r in recs], tok, labels=labels, groups=[r["module"] for r in recs], name="stdlib-text",
        where="stdlib-text", seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        labelled_fraction=labelled_fraction, train_only=len(extra),
        info={"task": task, "python": sys.version.split()[0], "paragraphs": len(recs) - len(extra),
              "stdlib": sysconfig.get_paths()["stdlib"],
              **({"extra_paragraphs": dict(Counter(r["package"] for r in extra))} if extra else {})},
    )


__all__ = [
    "TASKS", "corpus_records", "docstring_paragraphs", "load_stdlib_text", "package_paragraphs", "package_task_records",
    "pydoc_topics", "stdlib_paragraphs",
    "write_stdlib_corpus",
]
