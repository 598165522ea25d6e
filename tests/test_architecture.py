"""The package's shape, checked on the source: no import cycles (function-local imports
included), nothing imports the benchmarks, backends import only ``backends.base`` and
``backends.shared`` of their siblings, and no file points outside the repository for the spec."""

from __future__ import annotations

import ast
import os
import subprocess

import pytest
from paths import ROOT

PACKAGE = "tensornet_fast"
# kernels/ installs as tensornet_fast.kernels (setup.py package_dir)
SOURCES = {
    PACKAGE: os.path.join(ROOT, PACKAGE),
    f"{PACKAGE}.kernels": os.path.join(ROOT, "kernels"),
}
BACKENDS = ("reference", "cpu", "triton")


def _modules() -> dict[str, str]:
    """module name -> file, for every .py file of the package."""
    out = {}
    for prefix, top in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and d != "data"]
            if prefix == PACKAGE and os.path.samefile(dirpath, top) and "kernels" in dirnames:
                dirnames.remove("kernels")  # a local symlink, not part of the tree
            rel = os.path.relpath(dirpath, top)
            parts = [] if rel == "." else rel.split(os.sep)
            for f in filenames:
                if f.endswith(".py"):
                    name = f[:-3]
                    mod = ".".join([prefix, *parts] + ([] if name == "__init__" else [name]))
                    out[mod] = os.path.join(dirpath, f)
    return out


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """Package modules imported anywhere in the file (module level or inside functions)."""
    is_pkg = path.endswith("__init__.py")
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()
    tree = ast.parse(open(path).read(), path)
    typing_only = {  # ``if TYPE_CHECKING:`` imports never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - node.level + 1]
                target = ".".join(pkg + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import sub`` imports the submodule, ``from pkg import name`` the package
            subs = [f"{target}.{a.name}" for a in node.names]
            names = [m for m in subs if m in known] or [target]
            if len(names) < len(subs) and target not in names:
                names.append(target)
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
            elif name.split(".")[0] == "bench":
                found.add(name)
    found.discard(module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods) | {f"{PACKAGE}._C"}  # the compiled extension
    return {m: _imports(m, p, known) for m, p in mods.items()}


def test_no_import_cycles(graph):
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_package_never_imports_bench(graph):
    offenders = {
        m: sorted(i for i in imps if i.split(".")[0] == "bench") for m, imps in graph.items()
    }
    assert not {m: i for m, i in offenders.items() if i}


def test_backends_do_not_import_each_other(graph):
    for name in BACKENDS:
        prefix = f"{PACKAGE}.backends.{name}"
        for mod, imps in graph.items():
            if mod != prefix and not mod.startswith(prefix + "."):
                continue
            for imp in imps:
                if imp.startswith(f"{PACKAGE}.backends.") or imp == f"{PACKAGE}.backends":
                    allowed = (f"{PACKAGE}.backends.base", f"{PACKAGE}.backends.shared", prefix)
                    assert imp.startswith(allowed), f"{mod} imports {imp}"


def test_no_reference_outside_the_repository():
    """docs/spec.md is the contract; nothing may point at a spec outside the repository."""
    if not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(
        os.path.join(ROOT, ".git")
    ):
        pytest.skip("not a git checkout")
    hits = subprocess.run(
        ["git", "grep", "-n", "-F", "-e", "shared/" + "SPEC", "-e", "../" + "shared/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert hits == "", hits
    assert os.path.isfile(os.path.join(ROOT, "docs", "spec.md"))
