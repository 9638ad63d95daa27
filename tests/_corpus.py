"""Small real-text corpora for the tests: first sentences of stdlib docstrings (read with ast,
never imported). One helper for every test module that needs a few hundred sentences fast; the
full corpus is the library's `stdlib-text` source."""
from __future__ import annotations

import ast
import json
import sysconfig
from collections.abc import Sequence
from pathlib import Path

MODULES = ("argparse.py", "json/decoder.py", "pathlib.py", "shutil.py", "tarfile.py", "zipfile/__init__.py",
           "logging/__init__.py", "subprocess.py", "textwrap.py", "inspect.py")


def stdlib_sentences(n: int | None = None, *, modules: Sequence[str] = MODULES, min_chars: int = 20,
                     min_words: int = 0) -> list[str]:
    """Up to `n` distinct first sentences (20-200 characters) of class / function docstrings."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for name in modules:
        f = root / name
        if not f.exists():
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and (doc := ast.get_docstring(node)):
                first = " ".join(doc.split("\n\n")[0].split())
                if min_chars <= len(first) <= 200 and len(first.split()) >= min_words and first not in out:
                    out.append(first)
    return out if n is None else out[:n]


def write_jsonl(path: Path, texts: Sequence[str]) -> Path:
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in texts), encoding="utf-8")
    return path
