"""Which of the package's files a module imports, directly or through other package modules.

Read from the source (ast), function-level imports included, so the answer does not depend on what a
run happened to execute. `alpaca_qlora/x/__init__.py` counts when it holds code beyond its docstring.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "alpaca_qlora"


def module_file(name: str) -> Path | None:
    """alpaca_qlora.a.b -> alpaca_qlora/a/b.py (or alpaca_qlora/a/b/__init__.py); None outside the package."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def has_code(init_file: Path) -> bool:
    body = ast.parse(init_file.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def package_files_imported_by(path: Path) -> set[str]:
    """Repository-relative paths of every package file `path` needs, transitively (itself excluded)."""
    found: set[Path] = set()
    pending = [path]
    while pending:
        for name in imported_names(pending.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                file = module_file(".".join(parts[:depth]))
                if file is None or file in found:
                    continue
                if file.name == "__init__.py" and not has_code(file):
                    continue
                found.add(file)
                pending.append(file)
    return {str(file.relative_to(ROOT)) for file in found}
