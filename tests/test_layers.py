"""The package's layering, read from the source with ``ast`` (nothing is imported).

Layers, bottom to top: common < {model, data} < inference < eval < train < serve < demo < cli, where model
and data are siblings that must not import each other. Every ``self1e.*`` import counts, also those
inside functions; relative imports are not used. The import graph between modules is acyclic.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "self1e"
LAYERS = {"common": 0, "model": 1, "data": 1, "inference": 2, "eval": 3, "train": 4, "serve": 5, "demo": 6,
          "cli": 7}
SIBLINGS = {frozenset({"model", "data"})}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()


def imports_of(path: Path) -> tuple[list[tuple[str, int]], list[tuple[int, int, str | None]]]:
    """(self1e targets with line numbers, relative imports as (line, level, module)). A target is the
    module imported: ``from self1e.a import b`` names ``self1e.a.b`` when that is a module, else ``self1e.a``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    targets, relative = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "self1e" or alias.name.startswith("self1e."):
                    targets.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative.append((node.lineno, node.level, node.module))
                continue
            mod = node.module or ""
            if mod != "self1e" and not mod.startswith("self1e."):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                targets.append((sub if sub in MODULES else mod, node.lineno))
    return targets, relative


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in imports_of(p)[0]} for m, p in MODULES.items()}


def test_the_package_is_found_and_every_subpackage_has_a_layer():
    assert "self1e.model.self1e" in MODULES and "self1e.cli" in MODULES and len(MODULES) > 30
    top = {layer_of(m) for m in MODULES if m != "self1e"}
    assert top == set(LAYERS), f"subpackages without a layer (or layers without a package): {top ^ set(LAYERS)}"
    assets = PACKAGE / "assets"
    if assets.exists():
        assert not list(assets.rglob("*.py")), "self1e/assets should hold no code"


def test_no_relative_imports():
    found = [f"{m} line {line}: from {'.' * level}{mod or ''} import ..."
             for m, p in MODULES.items() for line, level, mod in imports_of(p)[1]]
    assert not found, "relative imports:\n" + "\n".join(found)


def test_imports_point_at_real_modules():
    bad = [f"{m} line {line} -> {t}" for m, p in MODULES.items() for t, line in imports_of(p)[0]
           if t not in MODULES]
    assert not bad, "imports of modules that do not exist:\n" + "\n".join(bad)


def test_no_module_imports_from_a_higher_or_sibling_layer():
    bad = []
    for m, p in MODULES.items():
        if m == "self1e":  # the package root imports anything, lazily
            continue
        own = layer_of(m)
        for target, line in imports_of(p)[0]:
            other = layer_of(target)
            if other is None:
                bad.append(f"{m} line {line} -> {target} (the package root, which imports every layer)")
            elif other != own and (LAYERS[other] > LAYERS[own] or frozenset({own, other}) in SIBLINGS):
                bad.append(f"{m} ({own}) line {line} -> {target} ({other})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``g`` as a list of nodes (first == last), or None when it is acyclic."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for t in sorted(g.get(n, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_module_graph_is_acyclic():
    g = graph()
    g.pop("self1e", None)  # the root's lazy exports are not part of any import chain
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_graph_sees_function_level_and_package_imports():
    g = graph()
    # function-level import (inside run()) and a package __init__ that imports its submodules
    assert "self1e.train.loop" in g["self1e.cli.train"]
    assert {"self1e.model.config", "self1e.model.registry", "self1e.model.self1e"} <= g["self1e.model"]
    # "from self1e.model import weights" names the submodule, "from self1e.model import X" the package
    assert "self1e.model.weights" in g["self1e.model.self1e"]
    assert "self1e.model" in g["self1e.inference.predictor"]


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from self1e.train.loop import train\n", ["self1e.train.loop"]),
    ("import self1e.model.config as c\n", ["self1e.model.config"]),
    ("from self1e.model import Self1eConfig, weights\n", ["self1e.model", "self1e.model.weights"]),
])
def test_import_parsing(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [t for t, _ in imports_of(path)[0]] == expected


RAY_MODULES = {"self1e.serve.ray_app", "self1e.eval.ray_data"}  # the only modules that import Ray at their top


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at a module's top level (not inside functions or classes)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_nothing_imports_ray_unless_asked():
    """Ray (the optional `ray` extra) is imported at the top of the two --ray modules only, and those
    are imported by nobody at their top: a run without --ray never loads Ray."""
    bad = []
    for m, p in MODULES.items():
        top = top_level_imports(p)
        if m not in RAY_MODULES and any(t == "ray" or t.startswith("ray.") for t in top):
            bad.append(f"{m} imports ray at its top")
        bad += [f"{m} imports {t} at its top" for t in top & RAY_MODULES if m not in RAY_MODULES]
    assert not bad, "\n".join(bad)
    assert all(any(t == "ray" or t.startswith("ray.") for t in top_level_imports(MODULES[m])) for m in RAY_MODULES)
