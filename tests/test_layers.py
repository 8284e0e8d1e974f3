"""The package's import graph: no cycles (at module level or inside functions), and every import
points down the layers: cli -> course -> engine -> algorithms -> core, models, data -> errors, io.
The layer of a module is its package's, so a new module is placed by where it is put."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

MTL = Path(__file__).resolve().parents[1] / "mtl"

#: layer of each package (by name prefix; the longest prefix wins): an import may go to the same
#: layer or any below
LAYERS = {
    "mtl.errors": 0, "mtl.io": 0,
    "mtl.core": 1, "mtl.models": 1, "mtl.data": 1,
    "mtl.algorithms": 2,
    "mtl.engine": 3,
    "mtl.course": 4,
    "mtl.cli": 5, "mtl.__main__": 5, "mtl": 5,
}
#: what ``ls mtl/`` shows: the layers and nothing else
TREE = {"__init__.py", "__main__.py", "errors.py", "io.py", "core", "models", "data", "algorithms",
        "engine", "course", "cli"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in MTL.rglob("*.py"):
        parts = path.relative_to(MTL.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the mtl modules it imports anywhere in its body (functions included)."""
    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mtl"):
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                deps |= set(subs)
                if len(subs) < len(node.names):  # names of the package itself, not only submodules
                    deps.add(resolve(node.module))
            elif isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.startswith("mtl")}
        deps.discard(name)
        graph[name] = deps
    return graph


def _layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(_imports(_modules())) == []


def test_every_module_has_a_layer_and_imports_point_down():
    modules = _modules()
    graph = _imports(modules)
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, deps in graph.items() for b in deps if _layer(b) > _layer(a)]
    assert upward == []


def test_the_check_sees_a_cycle_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_top_level_is_the_layers():
    assert {p.name for p in MTL.iterdir() if p.name != "__pycache__"} == TREE


@pytest.mark.parametrize("module", sorted(set(_modules()) - {"mtl.__main__"}))  # that one runs the CLI
def test_every_module_imports_alone_in_a_fresh_interpreter(module):
    """A cycle hidden behind import order shows up when a module is the first one imported."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          cwd=MTL.parent)
    assert done.returncode == 0, done.stderr[-2000:]


def _exception_classes(path: Path) -> list[str]:
    """Classes defined at module level whose bases name an error, exception or warning."""
    tree = ast.parse(path.read_text())
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef)
            and any(isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception", "Warning",
                                                                "Diverged")) for b in node.bases)]


def test_every_exception_class_lives_in_errors_py():
    outside = {name: classes for name, path in _modules().items() if name != "mtl.errors"
               for classes in [_exception_classes(path)] if classes}
    assert not outside, f"define these in mtl/errors.py (import them where they are raised): {outside}"
    assert "ConfigError" in _exception_classes(MTL / "errors.py"), "the check sees a class when there is one"
