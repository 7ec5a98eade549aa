"""The layering rule of docs/architecture.md: the dashboard never imports MLX, the engine never imports
Textual. Checked on the source (every import statement) and on a real import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mlx_dpo.tui

import mlx_dpo

TUI_DIR = Path(mlx_dpo.tui.__file__).parent
ENGINE_DIR = Path(mlx_dpo.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in this file names (relative imports
    resolve inside the package, so they are left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def is_package(name: str, *packages: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def test_the_scan_sees_imports(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "import mlx.core as mx\nfrom textual.app import App\nfrom . import sibling\n"
        "import importlib\nimportlib.import_module('mlx_lm')\n"
    )
    assert imported_modules(source) == {"mlx.core", "textual.app", "importlib", "mlx_lm"}
    assert is_package("mlx.core", "mlx") and not is_package("mlx_dpo.events", "mlx")


def test_tui_sources_never_import_mlx():
    sources = sorted(TUI_DIR.rglob("*.py"))
    assert TUI_DIR.name == "tui" and len(sources) > 10
    offenders = {
        str(path.relative_to(TUI_DIR)): sorted(
            name for name in imported_modules(path) if is_package(name, "mlx", "mlx_lm")
        )
        for path in sources
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_engine_sources_never_import_textual():
    sources = sorted(ENGINE_DIR.rglob("*.py"))
    assert ENGINE_DIR.name == "mlx_dpo" and sources
    offenders = {
        str(path.relative_to(ENGINE_DIR)): sorted(
            name
            for name in imported_modules(path)
            if is_package(name, "textual", "textual_plot", "textual_hires_canvas")
        )
        for path in sources
        if TUI_DIR not in path.parents
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_importing_the_dashboard_loads_no_mlx():
    code = (
        "import sys, mlx_dpo.tui.app\n"
        "loaded = sorted(m for m in sys.modules if m == 'mlx' or m.startswith(('mlx.', 'mlx_lm')))\n"
        "print(repr(loaded))\n"
        "print('textual' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded, textual_loaded = result.stdout.split("\n")[:2]
    assert loaded == "[]"
    assert textual_loaded == "True"  # the import really happened
