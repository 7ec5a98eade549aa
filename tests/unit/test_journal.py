"""Append-only verdict files: whole fsynced lines, a torn tail cut (and kept aside), undo by
truncation, a second writer refused, and kill -9 at random moments losing at most the line
being written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from mlx_dpo.data import read_records
from mlx_dpo.errors import UserError
from mlx_dpo.journal import (
    JsonLines,
    VerdictFiles,
    check_out_path,
    sidecar_path,
    skipped_path,
)


def pair(n: int) -> dict:
    return {"prompt": f"q{n}", "chosen": f"good {n}", "rejected": f"bad {n}", "meta": {"item": n}}


def skip(n: int) -> dict:
    return {"prompt": f"q{n}", "meta": {"item": n, "verdict": "tie"}}


def test_lines_are_appended_whole_and_read_back(tmp_path):
    path = tmp_path / "f.jsonl"
    with JsonLines(path) as lines:
        lines.append({"a": 1})
        lines.append({"b": "ü"})
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "ü"}\n'
    with JsonLines(path) as lines:
        assert [line.value for line in lines.lines] == [{"a": 1}, {"b": "ü"}]
        assert [line.offset for line in lines.lines] == [0, 9]


def test_a_torn_tail_is_cut_and_kept_aside(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2')
    with JsonLines(path) as lines:
        assert [line.value for line in lines.lines] == [{"a": 1}]
        assert lines.torn_bytes == 7
        lines.append({"c": 3})
    assert path.read_bytes() == b'{"a": 1}\n{"c": 3}\n'
    assert (tmp_path / "f.jsonl.torn").read_bytes() == b'{"b": 2\n'


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')  # written by hand
    with JsonLines(path) as lines:
        assert lines.torn_bytes == 0
        lines.append({"c": 3})
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'


def test_broken_complete_lines_are_a_user_error_and_nothing_is_changed(tmp_path):
    path = tmp_path / "f.jsonl"
    content = b'{"a": 1}\nnot json\n\n{"b": 2}\n{"c"'
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        JsonLines(path).open()
    assert caught.value.problems == [f"{path}:2: not valid JSON (Expecting value, column 1)"]
    assert path.read_bytes() == content


def test_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "f.jsonl"
    with JsonLines(path), pytest.raises(UserError, match="another process is writing"):
        JsonLines(path).open()
    with JsonLines(path):  # free again once closed
        pass


def test_verdicts_go_to_one_of_two_files_and_undo_takes_the_latest(tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"prompt": "mine", "chosen": "x", "rejected": "y"}\n')  # a line of the user's
    with VerdictFiles(out) as files:
        files.add(pair(1), is_pair=True)
        files.add(skip(2), is_pair=False)
        files.add(pair(3), is_pair=True)
        assert files.done_items() == {1, 2, 3}
        assert [r["meta"]["seq"] for r in files.verdicts()] == [1, 2, 3]
    assert skipped_path(out) == tmp_path / "pairs.skipped.jsonl"
    # The pairs file is training data as it is (the user's line included).
    assert [r.chosen[0]["content"] for r in read_records(out)] == ["x", "good 1", "good 3"]
    with VerdictFiles(out) as files:
        assert files.undo()["meta"]["item"] == 3
        assert files.undo()["meta"]["item"] == 2
        files.add(skip(4), is_pair=False)
        assert files.verdicts()[-1]["meta"]["seq"] == 2
        assert files.undo()["meta"]["item"] == 4
        assert files.undo()["meta"]["item"] == 1
        assert files.undo() is None  # the user's line is never undone
    assert out.read_text() == '{"prompt": "mine", "chosen": "x", "rejected": "y"}\n'
    assert skipped_path(out).read_text() == ""


def test_undo_refuses_when_another_line_follows_the_latest_verdict(tmp_path):
    out = tmp_path / "pairs.jsonl"
    with VerdictFiles(out) as files:
        files.add(pair(1), is_pair=True)
    with open(out, "a") as handle:
        handle.write('{"prompt": "later", "chosen": "x", "rejected": "y"}\n')
    with VerdictFiles(out) as files, pytest.raises(UserError, match="last line is not a verdict"):
        files.undo()


def test_out_paths(tmp_path):
    assert check_out_path(tmp_path / "p.jsonl") == tmp_path / "p.jsonl"
    with pytest.raises(UserError, match="must be a .jsonl file"):
        check_out_path(tmp_path / "p.json")
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        check_out_path(tmp_path / "d.jsonl")
    assert sidecar_path(tmp_path / "p.jsonl", "candidates") == tmp_path / "p.candidates.jsonl"


WRITER = """
import sys, time
from mlx_dpo.journal import VerdictFiles
files = VerdictFiles(sys.argv[1]).open()
start = len(files.verdicts())
for n in range(start, 100000):
    record = {"prompt": f"q{n}", "chosen": "c" * (n % 5000), "rejected": "r", "meta": {"item": n}}
    if n % 3:
        files.add(record, is_pair=True)
    else:
        del record["chosen"], record["rejected"]
        files.add(record, is_pair=False)
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_at_most_the_line_being_written(tmp_path):
    out = tmp_path / "pairs.jsonl"
    rng = random.Random(0)
    for _ in range(8):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(out)])
        time.sleep(rng.uniform(1.5, 3.0))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        with VerdictFiles(out) as files:
            items = [r["meta"]["item"] for r in files.verdicts()]
            # Every verdict written is there, in order, with no gap and no duplicate.
            assert items == list(range(len(items)))
            assert [r["meta"]["seq"] for r in files.verdicts()] == list(range(1, len(items) + 1))
    for path in (out, skipped_path(out)):
        for line in path.read_text().splitlines():
            json.loads(line)
    assert len(items) > 100
