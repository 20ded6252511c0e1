"""merkle/ stays pure: it imports only the standard library, ``cryptography`` and itself.

Read with ``ast`` (nothing is imported to check it), so every import statement counts, those
inside functions included. Beyond the third-party rule, the standard library modules that
bring I/O, clocks, randomness for non-secrets or concurrency are refused too (ARCHITECTURE.md:
"No I/O, no clock, no asyncio").
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

MERKLE = Path(__file__).resolve().parents[1] / "merkle"
ALLOWED_THIRD_PARTY = {"cryptography", "merkle"}
FORBIDDEN_STDLIB = {
    "asyncio",
    "datetime",
    "http",
    "importlib",
    "io",
    "logging",
    "os",
    "pathlib",
    "random",
    "shutil",
    "socket",
    "sqlite3",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "urllib",
}
MODULES = sorted(MERKLE.glob("*.py"))


def _imported_modules(source: str) -> set[str]:
    """Return the top-level package of every absolute import in ``source``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            found.add("__import__()")
    return found


def test_modules_found() -> None:
    names = {path.stem for path in MODULES}
    assert {"note", "checkpoint", "cosignature", "receipt", "policy", "hashing"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_imports_only_stdlib_and_cryptography(path: Path) -> None:
    imported = _imported_modules(path.read_text(encoding="utf-8"))
    outside = {
        name
        for name in imported
        if name not in ALLOWED_THIRD_PARTY and name not in sys.stdlib_module_names
    }
    assert not outside, f"{path.name} imports {sorted(outside)}"
    impure = imported & FORBIDDEN_STDLIB
    assert not impure, f"{path.name} imports I/O, clock or concurrency modules {sorted(impure)}"


def test_the_checker_sees_imports() -> None:
    source = "import os\nfrom requests import get\ndef f():\n    import asyncio.tasks\n"
    assert _imported_modules(source) == {"os", "requests", "asyncio"}
    assert _imported_modules("from . import x\n") == set()
    assert _imported_modules("m = __import__('os')\n") == {"__import__()"}
