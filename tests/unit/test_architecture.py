"""docs/architecture.md names every module, and the layering declared in pyproject.toml ([tool.importlinter], checked by
scripts/lint_imports.sh in .ci/run) covers the whole engine: a new module of mlx_dpo is listed
in the contract that keeps Textual, the dashboard and the CLI out of the engine."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


ROOT = Path(__file__).parents[2]
# The layers above the engine.
NOT_ENGINE = {"cli", "tui"}


def engine_contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(
        c
        for c in contracts
        if "mlx_dpo.cli" in c.get("forbidden_modules", ()) and "textual" in c["forbidden_modules"]
    )


def test_the_engine_contract_lists_every_engine_module():
    engine = {m.name for m in pkgutil.iter_modules([str(ROOT / "mlx_dpo")])} - NOT_ENGINE
    listed = {name.removeprefix("mlx_dpo.") for name in engine_contract()["source_modules"]}
    assert listed == engine


def test_the_dashboard_is_kept_from_mlx_and_the_cli():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    dashboard = next(c for c in contracts if c["source_modules"] == ["mlx_dpo.tui"])
    assert {"mlx", "mlx_lm", "mlx_dpo.cli"} <= set(dashboard["forbidden_modules"])


def test_the_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    # Named by its path inside mlx_dpo/ or tui/ (`trainer/step.py`, `screens/help.py`).
    named = set(re.findall(r"`([\w/]+\.py)`", doc))
    missing = [
        str(path.relative_to(ROOT))
        for folder in ("mlx_dpo", "tui")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "__init__.py"  # a package's docstring; cli/__init__.py is listed
        if path.relative_to(ROOT / folder).as_posix() not in named
    ]
    assert missing == []


def test_the_readme_cites_tests_that_exist():
    """Every sentence of README's "When a run goes wrong" is covered by a test named in the
    comment under it: each name cited there is a test of the suite."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## When a run goes wrong")[1].split("\n## ")[0]
    cited = set(
        re.findall(r"\b(test_\w+)\b(?!\.py)", " ".join(re.findall(r"<!--(.*?)-->", section, re.S)))
    )
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"def (test_\w+)", path.read_text(encoding="utf-8")))
    assert len(cited) > 40 and sorted(cited - defined) == []
