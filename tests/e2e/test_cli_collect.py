"""`mlx-dpo collect` and `mlx-dpo pairs` on the command line: user mistakes exit 2 with one
message naming the file (and line) or the flag; `pairs` end to end; kill -9 at any moment
loses at most the candidate or verdict being written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_dpo.cli import main
from mlx_dpo.journal import sidecar_path, skipped_path
from tests.collect_models import TEMPLATE, balanced_judge, comparable


@pytest.fixture(scope="module")
def judge(llama_plain, tmp_path_factory) -> Path:
    return balanced_judge(llama_plain, tmp_path_factory.mktemp("judge") / "judge")


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"what color is item {n}?\n" for n in range(12)))
    return path


@pytest.fixture
def template(tmp_path) -> Path:
    path = tmp_path / "judge.txt"
    path.write_text(TEMPLATE)
    return path


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_bad_prompts_file_exits_2_naming_file_and_line(capsys, tmp_path, llama_chatml):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    out = tmp_path / "pairs.jsonl"
    for command in (
        ["pairs", bad, "--model", llama_chatml, "--judge", llama_chatml, "--out", out],
        ["collect", bad, "--model", llama_chatml, "--out", out],
    ):
        code, _, err = run_cli(capsys, *command)
        assert code == 2
        assert f"{bad}:2: field 'prompt': must be a string or a list of messages" in err
        assert "Traceback" not in err
    assert not out.exists()


def test_a_broken_pairs_file_exits_2_naming_file_and_line(capsys, tmp_path, prompts):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": \n\n')
    for command in (
        ["pairs", prompts, "--model", "nope", "--judge", "nope", "--out", out],
        ["collect", prompts, "--model", "nope", "--out", out],
    ):
        code, _, err = run_cli(capsys, *command)
        assert code == 2 and f"{out}:2: not valid JSON" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "p.json"], "--out p.json: must be a .jsonl file"),
        (["--temp", "0"], "--temp 0 (greedy) makes every candidate the same"),
        (["--top-p", "2"], "--top-p must be between 0 and 1"),
        (["--candidates", "1"], "--candidates must be at least 2"),
        (["--adapter-path", "nope"], "nope"),
        (["--judge-prompt", "missing.txt"], "missing.txt: cannot read the judging prompt"),
    ],
)
def test_pairs_flag_mistakes_exit_2(
    capsys, monkeypatch, tmp_path, prompts, llama_chatml, extra, message
):
    out = ["--out", tmp_path / "pairs.jsonl"] if "--out" not in extra else []
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        capsys, "pairs", prompts, "--model", llama_chatml, "--judge", llama_chatml, *out, *extra
    )
    assert code == 2 and message in err and "Traceback" not in err


def test_collect_needs_a_terminal_and_two_different_samples(capsys, tmp_path, prompts):
    out = tmp_path / "pairs.jsonl"
    code, _, err = run_cli(capsys, "collect", prompts, "--model", "m", "--out", out, "--temp", "0")
    assert code == 2 and "--temp 0 (greedy) gives the same answer twice" in err
    code, _, err = run_cli(capsys, "collect", prompts, "--out", out)
    assert code == 2 and "--model is needed" in err
    code, _, err = run_cli(capsys, "collect", prompts, "--model", "m", "--out", out)
    assert code == 2 and "collect is interactive: run it in a terminal" in err  # pytest: no tty


def test_pairs_end_to_end(capsys, tmp_path, prompts, template, llama_chatml, judge):
    out = tmp_path / "pairs.jsonl"
    args = [
        "pairs", prompts, "--model", llama_chatml, "--judge", judge, "--out", out,
        "--judge-prompt", template, "--candidates", "3", "--max-tokens", "6", "--temp", "1.0",
        "--json",
    ]  # fmt: skip
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["prompts"] == 12 and summary["candidates_made"] == 36
    judged = summary["consistent"] + summary["inconsistent"]
    assert judged + summary["identical"] + summary["invalid"] == 12 * 3
    assert summary["consistent_share"] == summary["consistent"] / judged
    assert summary["candidates_per_second"] > 0 and summary["verdicts_per_second"] > 0
    assert len(out.read_text().splitlines()) == summary["consistent"]
    assert "prompt 12/12" in err and "ETA" in err
    # Again: everything is in the files already.
    code, stdout, _ = run_cli(capsys, *args)
    assert json.loads(stdout)["candidates_made"] == 0 and json.loads(stdout)["comparisons"] == 0


@pytest.mark.slow
def test_kill_9_at_any_moment_loses_at_most_what_is_being_written(
    tmp_path, prompts, template, llama_chatml, judge
):
    def command(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "mlx_dpo.cli", "pairs", str(prompts), "--model",
            str(llama_chatml), "--judge", str(judge), "--out", str(out), "--judge-prompt",
            str(template), "--candidates", "4", "--max-tokens", "8", "--temp", "1.0",
        ]  # fmt: skip

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    whole = tmp_path / "whole" / "pairs.jsonl"
    whole.parent.mkdir()
    subprocess.run(command(whole), check=True, capture_output=True, env=env, timeout=300)

    killed = tmp_path / "killed" / "pairs.jsonl"
    killed.parent.mkdir()
    written = (killed, skipped_path(killed), sidecar_path(killed, "candidates"))

    def size() -> int:
        return sum(path.stat().st_size for path in written if path.exists())

    rng = random.Random(0)
    kills = 0
    for _ in range(40):
        before = size()
        process = subprocess.Popen(
            command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        # Kill while it writes: once this run has added something, after a random moment.
        deadline = time.monotonic() + 120
        while size() == before and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
    else:
        raise AssertionError("the run never finished")
    print(f"{kills} kills")
    assert process.returncode == 0 and kills >= 3
    for full, resumed in (
        (whole, killed),
        (skipped_path(whole), skipped_path(killed)),
        (sidecar_path(whole, "candidates"), sidecar_path(killed, "candidates")),
    ):
        assert comparable(resumed) == comparable(full)
