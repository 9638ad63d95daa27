"""The floors of the house, read from the source (issue 28): which package may import which, and no
new import circle between files. Static: every `import condense...` / `from condense... import` in
`src/condense`, in functions too (a lazy import is still a dependency), TYPE_CHECKING blocks aside."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: package -> the condense packages it may import (besides itself, `core` and `version`)
ALLOWED = {
    "core": set(),
    "models": set(),
    "data": {"models"},
    "artifacts": {"models"},
    "cli": None,  # the top: anything
    "recipes": None,
    "demo": None,
}
#: method packages never import the command line, the recipes or the report
METHODS = ("prune", "quantize", "lowrank", "distill", "ssl", "reduce", "train", "export", "evaluate")
ABOVE_METHODS = {"cli", "recipes", "report", "demo", "tune", "artifacts"}
#: floors, bottom up (a package may import any package on its own floor or below)
FLOORS = [
    {"core", "version"},
    {"models", "data", "artifacts"},
    {"export", "evaluate"},
    {"train"},
    {"distill"},
    {"prune", "quantize", "lowrank", "reduce", "ssl"},
    {"tune", "report"},
    {"recipes"},
    {"demo", "cli", "__main__", "(root)"},
]
#: the arrows that still run up a floor (issue 28 allows at most 5); a new one fails
UPWARD = {
    ("export", "quantize"),  # formats.py deploys int8 through condense.quantize
    ("train", "distill"),  # train/recover.py recovers by distillation
}
#: circles left to break (two modules that import each other, one lazily); none are left, a new one fails
KNOWN_CIRCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "condense").rglob("*.py"):
        name = ".".join(p.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            targets |= {r for n in names if n.startswith("condense") and (r := resolve(n)) and r != mod}
        graph[mod] = targets
    return graph


def _package(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_packages_import_only_the_floors_below_them():
    bad = []
    for mod, targets in _imports().items():
        pkg = _package(mod)
        for t in targets:
            tp = _package(t)
            if tp in (pkg, "core", "version"):
                continue
            allowed = ALLOWED.get(pkg, ...)
            if allowed is not ... and allowed is not None and tp not in allowed:
                bad.append(f"{mod} -> {t}")
            if pkg in METHODS and tp in ABOVE_METHODS:
                bad.append(f"{mod} -> {t}")
            if tp == "(root)":
                bad.append(f"{mod} -> {t} (the package root; import condense.version for __version__)")
    assert not bad, "imports that run back up:\n" + "\n".join(sorted(bad))


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_new_import_circle_between_files():
    circles = set(_circles(_imports()))
    new = circles - KNOWN_CIRCLES
    assert not new, "new import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)
    gone = KNOWN_CIRCLES - circles
    assert not gone, "circles broken (remove them from KNOWN_CIRCLES): " + "; ".join(" <-> ".join(sorted(c)) for c in gone)


def test_at_most_the_listed_arrows_run_up_a_floor():
    floor = {pkg: i for i, pkgs in enumerate(FLOORS) for pkg in pkgs}
    up = set()
    for mod, targets in _imports().items():
        a = _package(mod)
        for t in targets:
            b = _package(t)
            if a != b and floor.get(b, 0) > floor.get(a, len(FLOORS)):
                up.add((a, b))
    assert up <= UPWARD, f"new arrows running up: {sorted(up - UPWARD)}"
    assert len(UPWARD) <= 5 and up == UPWARD, f"arrows gone (drop them from UPWARD): {sorted(UPWARD - up)}"



def test_condense_imports_sit_at_module_top():
    """An import of `condense.*` inside a function hides a dependency (issue 28). Outside the
    command line (lazy so that `condense --help` does not import torch) and the package root (its
    verbs load on first use), each one says why on its line or in the comment above it: `# lazy: <reason>`."""
    bad = []
    for p in sorted((SRC / "condense").rglob("*.py")):
        mod = ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        if mod == "condense" or mod.startswith("condense.cli"):
            continue
        text = p.read_text()
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                if not any(n.startswith("condense") for n in names):
                    continue
                said, k = [lines[node.lineno - 1]], node.lineno - 2  # the line, and the comment block above it
                while k >= 0 and lines[k].strip().startswith("#"):
                    said.append(lines[k])
                    k -= 1
                if not any("# lazy:" in line for line in said):
                    bad.append(f"{p.relative_to(SRC)}:{node.lineno} in {fn.name}(): {ast.unparse(node)}")
    assert not bad, ("condense imports inside functions without a '# lazy: <reason>' comment (hoist them, or say why):\n"
                     + "\n".join(sorted(set(bad))))


def test_no_private_name_imported_from_another_module():
    """A name another module imports is part of its module's interface, so it has a public name
    (issue 28): no `from condense.<module> import _name` in src/condense from any other module; a
    package's `__init__` importing from its own submodule counts as another module too. Relative
    imports are resolved; dunders (`__version__`) are not private."""
    bad = []
    for mod, p in sorted(_modules().items()):
        package = mod if p.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{source}" if source else base
            if source != "condense" and not source.startswith("condense.") or source == mod:
                continue
            bad += [f"{p.relative_to(SRC)}:{node.lineno}: from {source} import {a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, ("private names imported from another module (give them a public name in the module "
                     "that defines them):\n" + "\n".join(bad))


def test_no_private_name_reached_through_another_module():
    """The same rule for attribute access (issue 28): a module bound by `import condense.x as m` or
    `from condense.pkg import x` is not used as `m._name` outside x."""
    mods = _modules()
    bad = []
    for mod, p in sorted(mods.items()):
        tree = ast.parse(p.read_text())
        bound: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound |= {a.asname: a.name for a in node.names if a.asname and a.name in mods}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                bound |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in mods}
        bad += [f"{p.relative_to(SRC)}:{node.lineno}: {node.value.id}._{node.attr[1:]} ({bound[node.value.id]})"
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and bound[node.value.id] != mod and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not bad, "private names reached through another module:\n" + "\n".join(bad)
