"""The layout holds: no import circles (type-checking imports included), and no package
reaches up into one that imports it (the order is drawn in ``relay/__init__.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top; a module may import its own package and those listed before it.
ORDER = [
    (
        "relay.errors",
        "relay.error_shape",
        "relay.logs",
        "relay.sockets",
        "relay.allocator",
        "relay.tracing",
    ),
    ("relay.wire",),
    ("relay.config", "relay.dns_options"),
    ("relay.agent", "relay.machine"),
    ("relay.proxy",),
    ("relay.api", "relay.edge"),
    ("relay.server",),
    ("relay.cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every relay/directory module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] in {"relay", "directory"}}


def graph() -> dict[str, set[str]]:
    modules = {
        module_name(p): p for top in ("relay", "directory") for p in (ROOT / top).rglob("*.py")
    }
    return {
        name: {m for m in imports(p) if m in modules and m != name} for name, p in modules.items()
    }


def group_of(module: str) -> int:
    for rank, prefixes in enumerate(ORDER):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is not placed in the layout order")


def test_there_are_no_import_circles():
    edges = graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(edges[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])


def test_no_package_reaches_up_into_a_caller():
    for module, deps in graph().items():
        if not module.startswith("relay.") or module == "relay":
            continue
        for dep in deps:
            if dep.startswith("relay.") and dep != "relay":
                assert group_of(dep) <= group_of(module), f"{module} reaches up into {dep}"


def test_directory_never_imports_relay():
    for module, deps in graph().items():
        if module.startswith("directory"):
            assert not [d for d in deps if d.startswith("relay")], module
