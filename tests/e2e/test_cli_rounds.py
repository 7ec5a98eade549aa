"""`mlx-dpo train --rounds` on the command line (mlx_dpo/cli/rounds.py): every mistake is exit
2 with one line naming the file and line or the flag, before anything is made or loaded; a
rounds flag without --rounds is refused, not ignored; with a terminal each round's training
runs under the dashboard, which closes by itself after every round but the last."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlx_dpo.tui.app
import pytest

from mlx_dpo.cli import main
from mlx_dpo.cli.rounds import DashboardPhases
from mlx_dpo.events import LOG_FILE
from mlx_dpo.rounds import Round


def rounds_args(tmp_path: Path, *extra: str) -> list[str]:
    prompts = tmp_path / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("what color is item 1?\n")
    return [
        "train",
        "--rounds",
        "2",
        "--prompts",
        str(prompts),
        "--judge",
        "org/judge",
        "--model",
        "org/model",
        "--adapter-path",
        str(tmp_path / "parent"),
        "--no-tui",
        *extra,
    ]


def refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_a_bad_prompts_file_is_exit_2_with_its_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "fine too"}\n{"prompt": 3}\n')
    assert main(rounds_args(tmp_path, "--prompts", str(prompts))) == 2
    err = capsys.readouterr().err
    assert f"{prompts}:3" in err and "Traceback" not in err
    assert not (tmp_path / "parent").exists()  # nothing made before the prompts are read


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--data", "d.jsonl"], "--data: --rounds makes each round's data"),
        (["--valid-split", "test"], "--valid-split: --rounds makes each round's data"),
        (["--resume"], "--rounds continues by itself: run the same command again"),
        (["--plan"], "--plan with --rounds"),
        (["--candidates", "1"], "--candidates must be at least 2, got 1"),
        (["--temp", "0"], "--temp 0 (greedy) makes every candidate the same"),
        (["--top-p", "2"], "--top-p must be between 0 and 1, got 2"),
        (["--judge-prompt", "missing.txt"], "missing.txt: no such file (--judge-prompt)"),
    ],
)
def test_mistakes_are_exit_2_naming_the_flag(tmp_path, capsys, extra, message):
    assert message in refused(capsys, rounds_args(tmp_path, *extra))
    assert not (tmp_path / "parent").exists()


def test_the_rounds_need_their_inputs(tmp_path, capsys):
    argv = rounds_args(tmp_path)
    without = {
        "--adapter-path": "--rounds needs --adapter-path PARENT",
        "--model": "--rounds needs --model",
        "--prompts": "--rounds needs --prompts",
        "--judge": "--rounds needs --judge",
    }
    for flag, message in without.items():
        at = argv.index(flag)
        assert message in refused(capsys, argv[:at] + argv[at + 2 :])


def test_a_rounds_flag_without_rounds_is_refused(tmp_path, capsys):
    argv = ["train", "--model", "m", "--data", "d", "--judge", "j", "--temp", "0.5", "--no-tui"]
    assert "--judge, --temp: only with --rounds N" in refused(capsys, argv)


def test_help_lists_the_rounds_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "rounds (iterative DPO: sample from the policy, judge, train; docs/collect.md)" in text
    assert "--rounds ROUNDS" in text and "--prompts PROMPTS" in text


def test_with_a_terminal_each_round_but_the_last_closes_its_dashboard(tmp_path, monkeypatch):
    """DashboardPhases: the trainer in its own process writing train.log, the dashboard on the
    round's run directory (a stand-in here records how it was called)."""
    shown = []

    def dashboard(run_dir, trainer, close_when_finished=False):
        trainer.wait()
        shown.append((Path(run_dir).name, close_when_finished))
        return 0

    monkeypatch.setattr(mlx_dpo.tui.app, "run_dashboard", dashboard)

    class Printing(DashboardPhases):
        def command(self, argv):
            return [sys.executable, "-c", f"print('trainer', {argv!r})"]

    phases = Printing()
    for number in (1, 2):
        round_ = Round(number, 2, tmp_path, None)
        round_.run_dir.mkdir()
        assert phases.train(round_, ["train", "x"]) == 0
        assert "trainer ['train', 'x']" in (round_.run_dir / LOG_FILE).read_text()
    assert shown == [("round-1", True), ("round-2", False)]


def test_the_trainer_left_running_is_not_waited_for(tmp_path, monkeypatch):
    """Quitting a round's dashboard with "leave running" returns while the trainer goes on."""
    monkeypatch.setattr(mlx_dpo.tui.app, "run_dashboard", lambda *a, **k: 0)

    class Sleeping(DashboardPhases):
        def command(self, argv):
            return [sys.executable, "-c", "import time; time.sleep(30)"]

    round_ = Round(1, 2, tmp_path, None)
    round_.run_dir.mkdir()
    phases = Sleeping()
    processes = []
    original = subprocess.Popen

    def recording(*args, **kwargs):
        processes.append(original(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(subprocess, "Popen", recording)
    assert phases.train(round_, ["train"]) == 0
    assert processes[0].poll() is None
    processes[0].kill()
    processes[0].wait()
