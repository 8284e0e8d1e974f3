"""The package's import graph: no cycles (at module level or inside functions), and every import
points down the layers: tools -> course -> engine -> algorithms -> core (models, inner loop, data)."""
from __future__ import annotations

import ast
from pathlib import Path

MTL = Path(__file__).resolve().parents[1] / "mtl"

#: layer of each module (by name prefix; the longest prefix wins); an import may only go to the
#: same layer or one below
LAYERS = {
    "mtl.errors": 0, "mtl.norms": 0, "mtl.data": 0,
    "mtl.inner": 1, "mtl.heads": 1, "mtl.models": 1, "mtl.resnet": 1,
    "mtl.algorithms": 2, "mtl.baselines": 2, "mtl.pretrain": 2,
    "mtl.config": 3, "mtl.build": 3, "mtl.checkpoint": 3, "mtl.distributed": 3, "mtl.train": 3,
    "mtl.evaluate": 3, "mtl.classifier": 3,
    "mtl.quadratic": 4, "mtl.viz": 4, "mtl.widgets": 4, "mtl.exercises": 4, "mtl.compare": 4,
    "mtl.pipeline": 4, "mtl.course": 4, "mtl.alphabet": 4,
    "mtl.cli": 5, "mtl.bench": 5, "mtl.__main__": 5, "mtl": 5,
}


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
