"""Fixtures and helpers shared by several test files: a library's tests and its command
line's tests (test_export.py and test_cli_export.py, test_compare.py and test_cli_compare.py,
...), and the JSON values the property tests draw.

Loaded as a plugin by tests/conftest.py (pytest_plugins), so a session-scoped fixture here
is built once for all the files that use it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import strategies as st

from tests.conftest import preference_rows, write_jsonl
from tests.interop import build_quantizable, quantize_folder, train_run

# Any JSON value, a few levels deep: what a data line or a config file may hold.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def train_args(model, data, run_dir, *extra) -> list[str]:
    """`mlx-dpo train` arguments for a short headless run."""
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--adapter-path",
        str(run_dir),
        "--iters",
        "4",
        "--learning-rate",
        "2e-3",
        "--beta",
        "0.5",
        "--sample-max-tokens",
        "8",
        "--no-tui",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------
# export


@pytest.fixture(scope="session")
def export_bases(tmp_path_factory) -> dict[str, Path]:
    """Full-precision and 4-bit llama and qwen2 tiny models (dimensions that quantize)."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for model_type in ("llama", "qwen2"):
        full = build_quantizable(root / f"{model_type}-fp", model_type)
        out[f"{model_type}-fp"] = full
        out[f"{model_type}-q4"] = quantize_folder(full, root / f"{model_type}-q4", 4)
    return out


@pytest.fixture(scope="session")
def export_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", preference_rows(12))
    return folder


@pytest.fixture(scope="session")
def export_runs(export_bases, export_data, tmp_path_factory) -> dict[str, Path]:
    """A short training run on each base (adapters far from zero)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, base in export_bases.items():
        status, _ = train_run(base, export_data, root / name, iters=3)
        assert status == "completed"
        out[name] = root / name
    return out


# ---------------------------------------------------------------------------------------------
# compare


@pytest.fixture(scope="session")
def compare_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", preference_rows(12))
    write_jsonl(folder / "test.jsonl", preference_rows(3, seed=2, start=200))
    return folder


@pytest.fixture(scope="session")
def compare_run(llama_chatml, compare_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("compare") / "run"
    status, _ = train_run(llama_chatml, compare_data, run_dir, iters=6, learning_rate=1e-2)
    assert status == "completed"
    return run_dir


# ---------------------------------------------------------------------------------------------
# data audit


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


@pytest.fixture
def known_data(tmp_path) -> Path:
    """train: 20 pairs with 6-word chosen / 3-word rejected, 5 with 2 / 4, two copies of the
    first pair, one pair with chosen == rejected, a line that is not JSON and a record with a
    missing field. valid: 3 balanced pairs, one of whose prompts is also in train."""
    folder = tmp_path / "known"
    rows = [pair(f"p{i} q", "a b c d e f", "x y z") for i in range(20)]
    rows += [pair(f"r{i} q", "c d", "r s t u") for i in range(5)]
    rows += [rows[0], rows[0]]
    rows += [pair("same q", "one two", "one two")]
    write_jsonl(folder / "train.jsonl", rows)
    with open(folder / "train.jsonl", "a") as handle:
        handle.write("{not json\n")
        handle.write(json.dumps({"prompt": "no rejected", "chosen": "c"}) + "\n")
    write_jsonl(
        folder / "valid.jsonl",
        [pair("p1 q", "a b", "c d"), pair("v2 q", "a b c", "d e f"), pair("v3", "a", "b")],
    )
    return folder


# ---------------------------------------------------------------------------------------------
# run directories and outputs


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot write into: a read-only tmpfs as root (root ignores file
    permissions), else a folder without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                 capture_output=True)  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip("needs to mount a read-only tmpfs as root")
        yield folder
        subprocess.run(["umount", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Hugging Face sets (tests/hub_fixtures.py) in a local hub cache: test_sources.py,
# test_token_cache.py, test_hub.py


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> Path:
    from tests import hub_fixtures

    return hub_fixtures.build_hub_cache(tmp_path_factory.mktemp("hf-hub"))


@pytest.fixture
def use_hub_cache(hub_cache, monkeypatch):
    """The hub cache of the fixture sets, where huggingface_hub looks (HF_HUB_OFFLINE is set)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
