"""What a model folder, an adapter folder or the data can make mlx-dpo do: no code of theirs
runs unless the person at the keyboard passes --trust-remote-code, weights come only from
safetensors, and nothing in the data becomes a path or a command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_dpo.cli import main
from mlx_dpo.errors import UserError
from mlx_dpo.model import load_model
from tests.conftest import preference_rows

# Each file writes a marker where the test can see it: the marker is the proof the code ran.
CUSTOM_MODEL = """
import os
from pathlib import Path
Path(os.environ["MLX_DPO_TEST_MARKER"]).write_text("model code ran")
from mlx_lm.models.llama import Model, ModelArgs  # noqa: F401
"""

CUSTOM_TOKENIZER = """
import os
from pathlib import Path
Path(os.environ["MLX_DPO_TEST_MARKER"]).write_text("tokenizer code ran")
from transformers import PreTrainedTokenizerFast


class CustomTokenizer(PreTrainedTokenizerFast):
    pass
"""


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "code-ran"
    monkeypatch.setenv("MLX_DPO_TEST_MARKER", str(path))
    return path


def copy_model(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


@pytest.fixture
def model_with_code(llama_chatml, tmp_path) -> Path:
    folder = copy_model(llama_chatml, tmp_path / "custom-model")
    (folder / "custom_llama.py").write_text(CUSTOM_MODEL)
    edit_json(folder / "config.json", model_file="custom_llama.py")
    return folder


@pytest.fixture
def tokenizer_with_code(llama_chatml, tmp_path) -> Path:
    folder = copy_model(llama_chatml, tmp_path / "custom-tokenizer")
    (folder / "custom_tokenizer.py").write_text(CUSTOM_TOKENIZER)
    edit_json(
        folder / "tokenizer_config.json",
        tokenizer_class="CustomTokenizer",
        auto_map={"AutoTokenizer": [None, "custom_tokenizer.CustomTokenizer"]},
    )
    return folder


def test_a_model_file_is_refused_without_the_flag(model_with_code, marker):
    with pytest.raises(UserError, match="--trust-remote-code") as err:
        load_model(str(model_with_code))
    assert "custom_llama.py" in str(err.value)
    assert not marker.exists()


def test_a_model_file_runs_with_the_flag(model_with_code, marker):
    load_model(str(model_with_code), trust_remote_code=True)
    assert marker.read_text() == "model code ran"


def test_tokenizer_code_does_not_run_without_the_flag(tokenizer_with_code, marker):
    try:
        load_model(str(tokenizer_with_code))
    except UserError as err:
        assert "--trust-remote-code" in str(err)
    assert not marker.exists()


def test_tokenizer_code_runs_with_the_flag(tokenizer_with_code, marker):
    load_model(str(tokenizer_with_code), trust_remote_code=True)
    assert marker.read_text() == "tokenizer code ran"


def test_pickled_weights_are_never_loaded(llama_chatml, tmp_path):
    folder = copy_model(llama_chatml, tmp_path / "pickled")
    for weights in folder.glob("model*.safetensors"):
        weights.rename(weights.with_name("pytorch_model.bin"))
    with pytest.raises(UserError, match="only safetensors"):
        load_model(str(folder))


def write_pairs(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "train.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return folder


def test_an_adapter_folder_cannot_grant_trust(model_with_code, tmp_path, marker, capsys):
    """export, eval and compare take the base model from the adapter's config; its
    trust_remote_code does not carry over."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapters.safetensors").write_bytes(b"")
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {
                "model": str(model_with_code),
                "trust_remote_code": True,
                "fine_tune_type": "lora",
                "num_layers": 2,
                "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0},
            }
        )
    )
    data = write_pairs(tmp_path / "data", preference_rows(4))
    (data / "test.jsonl").write_text((data / "train.jsonl").read_text())
    commands = [
        ["export", "--adapter-path", str(adapter), "--save-path", str(tmp_path / "out")],
        ["eval", "--adapter-path", str(adapter), "--data", str(data)],
        ["compare", "--adapter-path", str(adapter), "--prompt", "hello"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        assert "--trust-remote-code" in capsys.readouterr().err, argv
    assert not marker.exists()


def test_resume_does_not_inherit_trust(model_with_code, tmp_path, marker, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        f"model: {model_with_code}\ndata: {tmp_path / 'data'}\ntrust_remote_code: true\n"
    )
    write_pairs(tmp_path / "data", preference_rows(8))
    argv = ["train", "--resume", "--adapter-path", str(run_dir), "--no-tui"]
    assert main(argv) == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert not marker.exists()


HOSTILE_STRINGS = [
    "../../../../outside.txt",
    "/tmp/mlx-dpo-hostile-absolute",
    "$(touch pwned-by-shell)",
    "`touch pwned-by-backtick`",
    "__import__('os').system('touch pwned-by-python')",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for x in range(3) %}{{ x }}{% endfor %}",
]


def test_the_data_is_text_never_a_path_or_code(llama_chatml, tmp_path):
    """Hostile-looking strings in every field, trained on in a working directory of their own:
    the only files that appear are the run directory's."""
    rows = []
    for i, text in enumerate(HOSTILE_STRINGS * 2):
        rows.append(
            {"system": text, "prompt": f"{text} {i}", "chosen": f"{text} yes", "rejected": text}
        )
    work = tmp_path / "work"
    data = write_pairs(work / "data", rows)
    before = {p for p in tmp_path.rglob("*")}
    absolute = Path("/tmp/mlx-dpo-hostile-absolute")
    absolute.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "mlx_dpo.cli", "train", "--model", str(llama_chatml), "--data",
        str(data), "--adapter-path", "run", "--iters", "2", "--batch-size", "2", "--no-tui",
        "--lora-rank", "2", "--eval-every", "0",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all((work / "run") in (p, *p.parents) for p in created), created
    assert not absolute.exists()
