"""`mlx-dpo export --gguf`: the fused model written as one GGUF file computes what base +
adapter computes (read back with our reader, and its layout with the gguf package's), with
the chat template in it; mistakes are refused before anything is written; a killed export's
temporary folder is removed by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from mlx_dpo.cli import main
from mlx_dpo.events import read_events
from mlx_dpo.gguf import load_gguf
from mlx_dpo.model import load_adapter_into, load_model
from tests.conftest import preference_rows, write_jsonl
from tests.interop import logits_of, train_run

PROBE = [5, 17, 42, 8, 99, 3]


@pytest.fixture
def trained_run(llama_chatml, tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", preference_rows(8))
    run = tmp_path / "run"
    status, _ = train_run(llama_chatml, data, run, iters=3, learning_rate=2e-2)
    assert status == "completed"
    return run


def test_export_gguf_computes_base_plus_adapter(llama_chatml, trained_run, tmp_path, capsys):
    out = tmp_path / "tuned.gguf"
    assert main(["export", "--adapter-path", str(trained_run), "--gguf", str(out)]) == 0
    assert "done:" in capsys.readouterr().out
    base, tokenizer, _, _ = load_model(str(llama_chatml))
    base_logits = logits_of(base, PROBE)
    load_adapter_into(base, trained_run)
    tuned_logits = logits_of(base, PROBE)
    assert np.abs(tuned_logits - base_logits).max() > 1e-3  # the adapter changed the model
    loaded, loaded_tokenizer, _ = load_gguf(out, lambda _: None)
    # float16 weights: the export equals base + adapter far closer than the tuning moved it.
    np.testing.assert_allclose(logits_of(loaded, PROBE), tuned_logits, atol=2e-3)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    fields = {n: f.contents() for n, f in gguf.GGUFReader(str(out)).fields.items()}
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tuned"
    events = [e for e in read_events(trained_run) if e["event"] == "export"]
    assert [e["status"] for e in events] == ["started", "done"]
    assert not list(tmp_path.glob("tuned.gguf.tmp-*"))


def test_export_gguf_refuses_mistakes(trained_run, tmp_path, capsys):
    out = tmp_path / "tuned.gguf"
    out.write_text("mine")
    run = str(trained_run)
    cases = [
        (["--gguf", str(out)], "already exists"),
        (["--gguf", str(trained_run / "x.gguf")], "inside the adapter folder"),
        (["--gguf", str(tmp_path / "x.bin")], "name the file .gguf"),
        (["--gguf", str(tmp_path / "y.gguf"), "--save-path", str(tmp_path / "f")], "give one"),
        (["--gguf", str(tmp_path / "y.gguf"), "--gguf-type", "q3_k"], "choose one of"),
        ([], "--save-path FOLDER"),
    ]
    for flags, message in cases:
        assert main(["export", "--adapter-path", run, *flags]) == 2, flags
        assert message in capsys.readouterr().err
    assert out.read_text() == "mine"
    assert not (tmp_path / "y.gguf").exists()


def test_a_killed_gguf_export_is_cleaned_up_by_the_next_one(trained_run, tmp_path, monkeypatch):
    """The file is written inside a marked OUT.tmp-* folder: a kill leaves the folder, and the
    next export to the same file removes it (a folder without the marker stays)."""
    out = tmp_path / "tuned.gguf"
    (tmp_path / "tuned.gguf.tmp-mine").mkdir()
    command = [sys.executable, "-m", "tests.faults", "rename:1", "--", "export", "--adapter-path",
               str(trained_run), "--gguf", str(out)]  # fmt: skip
    repo = Path(__file__).resolve().parents[2]
    killed = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(p.name for p in tmp_path.glob("tuned.gguf.tmp-*"))
    assert len(left) == 2 and "tuned.gguf.tmp-mine" in left and not out.exists()
    lines: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert main(["export", "--adapter-path", str(trained_run), "--gguf", str(out)]) == 0
    assert [p.name for p in tmp_path.glob("tuned.gguf.tmp-*")] == ["tuned.gguf.tmp-mine"]
    assert any("left by an export that was cut short" in line for line in lines)
    assert os.path.getsize(out) > 0
