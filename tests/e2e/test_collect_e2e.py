"""End to end on a pseudo-terminal (tmux): a person labels prompts with keys in `mlx-dpo
collect`, the app is killed outright part way and started again, the labelling goes on where
it stopped, and `mlx-dpo train` trains on the file it wrote."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_dpo.events import read_events
from mlx_dpo.journal import skipped_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

PROMPTS = [f"what color is item {n}?" for n in range(5)]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-t", session, "-p")


def wait_until(condition, what: str, timeout: float = 60.0, session: str | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    shown = f"; the screen:\n{screen(session)}" if session else ""
    raise AssertionError(f"timed out waiting for {what}{shown}")


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def verdicts(out: Path) -> int:
    return len(lines_of(out)) + len(lines_of(skipped_path(out)))


def start(session: str, model: Path, prompts: Path, out: Path) -> None:
    command = [
        sys.executable, "-m", "mlx_dpo.cli", "collect", str(prompts), "--model", str(model),
        "--out", str(out), "--temp", "1.0", "--max-tokens", "12", "--seed", "7",
    ]  # fmt: skip
    shell = f"env -u CI TERM=xterm-256color {shlex.join(command)}; sleep 60"
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "36", shell)


def judge(session: str, key: str, out: Path) -> None:
    """Press a verdict key once the answers are complete; wait until it is on disk."""
    before = verdicts(out)
    wait_until(lambda: "model prefers" in screen(session), "answers", session=session)
    time.sleep(0.3)  # the worker's "done" follows the preference
    tmux("send-keys", "-t", session, key)
    wait_until(lambda: verdicts(out) == before + 1, f"the verdict {key!r} on disk")


def collect_pid(session: str) -> int:
    shell = int(tmux("display-message", "-p", "-t", session, "#{pane_pid}").strip())
    children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
    (pid,) = [int(c) for c in children if "collect" in Path(f"/proc/{c}/cmdline").read_text()]
    return pid


def test_label_kill_continue_and_train(llama_chatml, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "pairs.jsonl"
    first, second = f"collect-{tmp_path.name}-1", f"collect-{tmp_path.name}-2"
    start(first, llama_chatml, prompts, out)
    try:
        wait_until(lambda: "A better" in screen(first) and "both bad" in screen(first), "keys")
        judge(first, "a", out)
        judge(first, "t", out)
        # The app dies outright (kill -9) while the third prompt is being answered.
        app = collect_pid(first)
        worker = int(Path(f"/proc/{app}/task/{app}/children").read_text().split()[0])
        os.kill(app, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{app}").exists(), "the app to die")
        wait_until(lambda: not Path(f"/proc/{worker}").exists(), "its worker to end")
    finally:
        tmux("kill-session", "-t", first)
    assert verdicts(out) == 2

    start(second, llama_chatml, prompts, out)
    try:
        wait_until(lambda: "Prompt 3/5" in screen(second), "the third prompt", session=second)
        assert "judged 2/5" in screen(second)
        judge(second, "b", out)
        wait_until(lambda: "model prefers" in screen(second), "answers")
        time.sleep(0.3)
        tmux("send-keys", "-t", second, "e")
        wait_until(lambda: "Edit answer A" in screen(second), "the editor")
        time.sleep(0.5)  # the editor takes the focus once it is mounted
        tmux("send-keys", "-t", second, "End", " Truly.")
        wait_until(lambda: "Truly." in screen(second), "the typed text", session=second)
        tmux("send-keys", "-t", second, "C-s")
        wait_until(lambda: verdicts(out) == 4, "the edit on disk")
        judge(second, "x", out)
        wait_until(lambda: "Every prompt has a verdict" in screen(second), "the end")
        tmux("send-keys", "-t", second, "u")  # both bad was a mistake
        wait_until(lambda: verdicts(out) == 4, "the undo")
        wait_until(lambda: "Undone: both bad" in screen(second), "the undone prompt")
        tmux("send-keys", "-t", second, "a")
        wait_until(lambda: verdicts(out) == 5, "the new verdict")
        tmux("send-keys", "-t", second, "q")
        wait_until(
            lambda: (
                "collect" not in tmux("list-panes", "-t", second, "-F", "#{pane_current_command}")
                or True
            ),
            "quit",
        )
    finally:
        tmux("kill-session", "-t", second)

    pairs, skipped = lines_of(out), lines_of(skipped_path(out))
    assert [r["meta"]["verdict"] for r in pairs] == ["a", "b", "edit", "a"]
    assert [r["meta"]["verdict"] for r in skipped] == ["tie"]
    assert [r["prompt"] for r in pairs] == [PROMPTS[0], PROMPTS[2], PROMPTS[3], PROMPTS[4]]
    assert pairs[2]["chosen"].endswith(" Truly.")
    assert [r["meta"]["seq"] for r in pairs + skipped] == [1, 3, 4, 5, 2]

    run_dir = tmp_path / "run"
    train = [
        sys.executable, "-m", "mlx_dpo.cli", "train", "--data", str(out), "--model",
        str(llama_chatml), "--adapter-path", str(run_dir), "--iters", "2", "--batch-size", "2",
        "--eval-every", "0", "--save-every", "0", "--lora-rank", "4", "--no-tui",
    ]  # fmt: skip
    result = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    end = [e for e in read_events(run_dir) if e["event"] == "run_end"][-1]
    assert end["status"] == "completed"
    start_event = [e for e in read_events(run_dir) if e["event"] == "run_start"][0]
    assert start_event["train_pairs"] == 4
    assert (run_dir / "adapters.safetensors").exists()
