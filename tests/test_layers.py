"""The package's layers point only down, and no module imports itself round a circle.

    ground (detections, images, prompts, data formats, box ops, answers, slicing)  <-  models  <-  tasks (train,
    evaluate, describe, distill, label, export)  <-  entry points (cli, serve, the `groundscope` facade)

Every import counts, the ones inside functions too: an import deferred for start-up time is still a dependency.
Read from the source with `ast`, so the test needs no optional package installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "groundscope"

GROUND = {"answers", "box_ops", "data", "detections", "images", "masks", "postprocess", "prompts", "rec_subject",
          "slicing", "visualize"}
TASKS = {"describe", "distill", "evaluate", "export", "label", "track", "train"}
ENTRY = {"cli", "serve"}
LAYER_NAMES = ("ground", "models", "tasks", "entry points")


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every module under groundscope/."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The groundscope modules `name` imports (a `from pkg import mod` names the module, else the package)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import groundscope.x.y` of a name inside a module
                t = t.rpartition(".")[0]
            if t.startswith("groundscope") and t != name:
                found.add(t)
    return found


def layer(name: str) -> int:
    """0 ground, 1 models, 2 tasks, 3 entry points (the root package is the public facade: top)."""
    parts = name.split(".")
    if len(parts) == 1:
        return 3
    top = parts[1]
    if top in GROUND:
        return 0
    if top == "models":
        return 1
    if top in TASKS:
        return 2
    if top in ENTRY:
        return 3
    raise AssertionError(f"{name}: not in a layer; add groundscope.{top} to GROUND, TASKS or ENTRY in {__file__}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_is_in_a_layer(graph):
    for name in graph:
        layer(name)


def test_no_import_points_up(graph):
    up = sorted(f"{a} ({LAYER_NAMES[layer(a)]}) imports {b} ({LAYER_NAMES[layer(b)]})"
                for a, targets in graph.items() for b in targets if layer(b) > layer(a))
    assert not up, "imports against the layers:\n" + "\n".join(up)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_what_they_are_for():
    """A cycle and an upward import in a made-up graph are found (the tests above cannot pass vacuously)."""
    made_up = {"groundscope.images": {"groundscope.models.loading"}, "groundscope.models.loading": {"groundscope.images"},
               "groundscope.cli": set()}
    assert cycles(made_up) == [["groundscope.images", "groundscope.models.loading"]]
    assert layer("groundscope.images") < layer("groundscope.models.loading") < layer("groundscope.train.loop")
    assert layer("groundscope.cli.common") == layer("groundscope.serve.app") == 3


def test_the_facade_names_modules_that_exist(graph):
    """`groundscope.<name>` loads its names from modules by string; each of those modules is real."""
    import groundscope

    missing = sorted({m for m in groundscope._EXPORTS.values() if m not in graph})
    assert not missing, missing


def test_no_cycles_between_packages(graph):
    """Within a layer packages may use each other (training evaluates, RKD training embeds regions), one way only."""
    def package(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for a, targets in graph.items():
        packages.setdefault(package(a), set()).update(package(b) for b in targets if package(b) != package(a))
    for b in {t for ts in packages.values() for t in ts}:
        packages.setdefault(b, set())
    found = cycles({k: v - {"groundscope"} for k, v in packages.items()})  # the facade loads names on use only
    assert not found, "packages importing each other:\n" + "\n".join(" <-> ".join(c) for c in found)
