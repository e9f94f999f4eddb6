"""The package's layout keeps its promises: each folder a layer, imports flowing one way
(type-only imports included), no module over 450 lines, private SDK state read in ``sdk/``
only, and nothing on the request path (nor the pytest plugin) loading the inbox or uvicorn."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lemma_middleware"

LAYERS_BELOW = {
    "core": set(),
    "sdk": {"core"},
    "request": {"core", "sdk"},
    "delivery": {"core"},
    "export": {"core", "sdk", "request", "delivery"},
    "adapters": {"core", "sdk", "request", "delivery", "export"},
    "testing": {"core", "sdk", "request", "delivery", "export"},
    "inbox": {"core", "testing"},
}
"""What each layer may import besides itself (``__init__`` and ``__main__`` may import
any layer)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def internal_imports(path: Path) -> set[str]:
    """Every module of the package ``path`` imports, at run time or for type checking."""
    found: set[str] = set()
    known = modules()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import of {node.module}")
            if node.module.startswith("lemma_middleware"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lemma_middleware"))
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_no_module_is_over_450_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: size for name, size in sizes.items() if size > 450} == {}


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for name, path in modules().items():
        own = layer(name)
        if own is None:
            continue
        for imported in internal_imports(path):
            other = layer(imported)
            if other is not None and other != own and other not in LAYERS_BELOW[own]:
                wrong.append(f"{name} imports {imported}")
    assert wrong == []


def test_there_is_no_import_circle_type_only_imports_included() -> None:
    graph = {name: internal_imports(path) for name, path in modules().items()}
    circles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph.get(name, ())):
            if imported == name or imported not in graph:
                continue
            if state.get(imported) == "open":
                circles.append([*trail[trail.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*trail, imported])
        state[name] = "done"

    for name in graph:
        if name not in state and name != "lemma_middleware":  # the package imports its API
            visit(name, [name])
    assert circles == []


def private_sdk_uses(path: Path) -> list[str]:
    """Imports of Langfuse's private modules and reads of private attributes (``x._y``,
    ``getattr(x, "_y")``) of anything but the module's own objects."""
    tree = ast.parse(path.read_text())
    own = {
        node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
    }  # a module's own classes may keep private state
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "._" in node.module:
            uses.append(f"import {node.module}")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls", *own})
        ) or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "hasattr", "setattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
            and not str(node.args[1].value).startswith("__")
        ):
            uses.append(f"{ast.unparse(node)} (line {node.lineno})")
    return uses


def test_private_sdk_state_is_read_in_the_sdk_subpackage_only() -> None:
    outside = {
        name: uses
        for name, path in modules().items()
        if layer(name) != "sdk" and (uses := private_sdk_uses(path))
    }
    assert outside == {}


@pytest.mark.parametrize(
    "statement",
    ["import lemma_middleware", "import lemma_middleware.testing.plugin"],
)
def test_the_package_and_its_pytest_plugin_load_neither_uvicorn_nor_the_inbox(
    statement: str,
) -> None:
    check = (
        f"{statement}\nimport sys\n"
        "print(sorted(m for m in sys.modules if m == 'uvicorn' or m.startswith('uvicorn.') "
        "or m.startswith('lemma_middleware.inbox')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_the_public_api_is_what_the_readme_documents() -> None:
    """``__all__`` holds exactly the names of the README's API table."""
    import lemma_middleware

    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("### The API", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert set(lemma_middleware.__all__) == documented
    assert all(hasattr(lemma_middleware, name) for name in documented)
