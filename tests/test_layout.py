"""The tree shows the architecture, and the imports go one way:

    engine.commands → engine.bench → engine.control → engine.live → engine.pipeline → engine.backends
        → engine.config → engine.core
    bridges → engine.core only (bridges are used by live, control, bench and commands, never the other way round)

Every import counts, lazy ones inside functions too, so a cycle can't hide behind a function call.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    "engine.core",
    "engine.config",
    "engine.backends",
    "engine.pipeline",
    "engine.live",
    "engine.control",
    "engine.bench",
    "engine.commands",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in ("engine", "bridges") for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `path` imports (a `from package import module` names the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and modules[name].name != "__init__.py":
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return rank
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imported in graph.items():
        for target in sorted(imported):
            if module.startswith("bridges") and target.startswith("engine") and _layer(target) != 0:
                bad.append(f"{module} imports {target}: bridges may use engine.core only")
            mine, theirs = _layer(module), _layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{module} imports {target}: {LAYERS[mine]} is below {LAYERS[theirs]}")
            if mine is not None and mine < LAYERS.index("engine.live") and target.startswith("bridges"):
                bad.append(f"{module} imports {target}: only engine.live and the layers above it use bridges")
    return bad


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from where it was closed)."""
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state[target] == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif state[target] == 0:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module)
    return cycles


def test_imports_follow_the_layers():
    assert layer_violations(_graph()) == []


def test_no_import_cycles():
    assert import_cycles(_graph()) == []


def test_every_engine_module_sits_in_a_layer():
    loose = [m for m in _modules() if m.startswith("engine.") and _layer(m) is None]
    assert loose == [], "put each engine module in one of " + ", ".join(LAYERS)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"engine.pipeline.stream": {"engine.live.loop"}, "engine.live.loop": set()}, "is below"),
        ({"bridges.file": {"engine.pipeline.image"}, "engine.pipeline.image": set()}, "engine.core only"),
        ({"engine.pipeline.stream": {"bridges.uri"}, "bridges.uri": set()}, "use bridges"),
    ],
)
def test_the_checks_catch_a_bad_import(graph, expected):
    assert any(expected in line for line in layer_violations(graph))


def test_the_cycle_check_catches_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]


def readme_layout() -> dict[str, set[str]]:
    """The README's Layout block as {folder: file names}: a folder's line and its indented continuation lines."""
    block = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines():
        if line and not line[0].isspace():
            folder, _, line = line.partition(" ")
        listed.setdefault(folder, set()).update(re.findall(r"\b([a-z_]+\.py)\b", line))
    return listed


def test_readme_layout_matches_the_tree():
    listed = readme_layout()
    packages = [layer.replace(".", "/") for layer in LAYERS] + ["bridges"]
    for package in (p for p in packages if (ROOT / p).is_dir()):  # a layer that has no package yet lists nothing
        files = {p.name for p in (ROOT / package).glob("*.py")} - {"__init__.py"}
        assert listed.get(package + "/") == files, f"README Layout for {package}/"
    folders = {str(p.relative_to(ROOT)) for p in (ROOT / "engine").iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(packages), f"engine/ has folders outside the layers: {sorted(folders - set(packages))}"
