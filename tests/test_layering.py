"""The package's layers, checked from the source: no import runs up the order, none forms a cycle,
and only the harness knows argparse. Function-level imports count like top-level ones."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_lfbm"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = {
    "_context": 0,
    "ops": 0,
    "data": 0,
    "transforms": 1,
    "nets": 1,
    "priors": 2,
    "models": 3,
    "infer": 4,
    "metrics": 5,
    "train": 6,
    "tasks": 7,
    "harness": 8,
}
TOP = max(LAYERS.values()) + 1  # the package root only re-exports


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return TOP
    return LAYERS.get(parts[1], -1)


def imports_of(path: Path, module: str) -> Set[str]:
    """Every pyro_lfbm module (and argparse) that ``path`` imports, anywhere in the file."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from pyro_lfbm.infer import guide`` may name a submodule
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists():
                    found.add(candidate)
    return {name for name in found if name == "argparse" or name.split(".")[0] == "pyro_lfbm"}


def import_graph() -> Dict[str, Set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        graph[module] = imports_of(path, module)
    return graph


GRAPH = import_graph()


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in GRAPH if layer_of(m) < 0)
    assert not unplaced, f"modules in no layer (add their package to LAYERS): {unplaced}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_up_the_layers(module):
    upward = sorted(
        target
        for target in GRAPH[module]
        if target != "argparse" and layer_of(target) > layer_of(module)
    )
    assert not upward, f"{module} (layer {layer_of(module)}) imports a higher layer: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if layer_of(m) < LAYERS["harness"]))
def test_only_the_harness_knows_argparse(module):
    assert "argparse" not in GRAPH[module], f"{module} imports argparse; command lines belong in the harness"


def find_cycle(edges: Dict[str, Set[str]]):
    """One cycle of ``edges`` as a list of nodes (first == last), or None."""
    state: Dict[str, int] = {}
    path: list = []

    def visit(node: str):
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_modules():
    # a package's __init__ re-exporting its own submodules is not a cycle
    edges = {m: {t for t in targets if t in GRAPH and not t.startswith(m + ".")} for m, targets in GRAPH.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycles_between_packages():
    edges: Dict[str, Set[str]] = {}
    for module, targets in GRAPH.items():
        if module == "pyro_lfbm":
            continue
        source = package_of(module)
        edges.setdefault(source, set()).update(
            package_of(t) for t in targets if t in GRAPH and package_of(t) not in (source, "pyro_lfbm")
        )
    cycle = find_cycle(edges)
    assert cycle is None, "packages import each other: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_checker_sees_upward_and_function_level_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from pyro_lfbm.harness import cli\n    import argparse\n    from ..train import loop\n")
    found = imports_of(probe, "pyro_lfbm.infer.probe")
    assert {"pyro_lfbm.harness", "argparse", "pyro_lfbm.train"} <= found
    assert any(layer_of(t) > LAYERS["infer"] for t in found if t != "argparse")
