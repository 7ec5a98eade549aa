"""Pilot tests of the collect screen, driving every key, against a stand-in worker that
answers from the seeds (fake_collect_worker.py, no MLX): what each key writes, undo, edit,
refusals, a worker that dies, a torn line, continuing where a session stopped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import screen_text, wait_until
from fake_collect_worker import fake_answer
from mlx_dpo.tui.collect import CollectApp
from mlx_dpo.tui.collect.screens import EditAnswerScreen
from textual.widgets import TextArea

from mlx_dpo.collect import progress
from mlx_dpo.journal import VerdictFiles, skipped_path
from mlx_dpo.prompts import load_prompts, pair_seeds

HERE = Path(__file__).parent
SIZE = (110, 30)
PROMPTS = ["first question?", "second question?", "third question?", "fourth question?"]


def fake_worker(*args: str) -> list[str]:
    return [sys.executable, str(HERE / "fake_collect_worker.py"), *args]


def prompts_file(tmp_path: Path, lines: list[str] = PROMPTS) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def collect_app(tmp_path: Path, *worker_args: str, seed: int = 3) -> CollectApp:
    prompts = load_prompts(prompts_file(tmp_path))
    files = VerdictFiles(tmp_path / "pairs.jsonl").open()
    return CollectApp(
        prompts, files, fake_worker(*worker_args), seed=seed, model="fake-model", adapter=None
    )


def expected(prompt_key: str, draw: int = 0, seed: int = 3) -> dict[str, str]:
    a, b = pair_seeds(seed, prompt_key, draw, same=False)
    return {"a": fake_answer("a", a), "b": fake_answer("b", b)}


async def ready(pilot, app: CollectApp) -> None:
    """The current prompt's answers are on screen and the verdict keys are live."""
    await wait_until(pilot, lambda: app.action_available("verdict"), timeout=20)


async def test_every_key_writes_what_it_says(tmp_path):
    app = collect_app(tmp_path)
    out, skipped = tmp_path / "pairs.jsonl", skipped_path(tmp_path / "pairs.jsonl")
    keys = [p.key for p in app.prompts]
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        text = screen_text(app)
        for label in ("A better", "B better", "tie", "both bad", "edit", "undo"):
            assert label in text  # the footer names each key by its verdict
        assert "Prompt 1/4" in text and "first question?" in text
        assert expected(keys[0])["a"] in text and expected(keys[0])["b"] in text
        assert "temp 0.8, top-p 0.95, up to 16 tokens" in text

        await pilot.press("a")  # A better
        await ready(pilot, app)
        assert "Prompt 2/4" in screen_text(app)
        await pilot.press("r")  # regenerate: the next draw's seeds
        await wait_until(pilot, lambda: app.shown.draw == 1 and app.action_available("verdict"))
        assert expected(keys[1], draw=1)["a"] in screen_text(app)
        await pilot.press("b")  # B better
        await ready(pilot, app)
        await pilot.press("t")  # tie
        await ready(pilot, app)
        await pilot.press("x")  # both bad
        await wait_until(pilot, lambda: app.shown is None)
        assert "Every prompt has a verdict" in screen_text(app)

    pairs, skips = lines_of(out), lines_of(skipped)
    assert [r["meta"]["verdict"] for r in pairs] == ["a", "b"]
    assert [r["meta"]["verdict"] for r in skips] == ["tie", "both_bad"]
    first, second = pairs
    assert first["prompt"] == "first question?"
    assert (first["chosen"], first["rejected"]) == (expected(keys[0])["a"], expected(keys[0])["b"])
    assert (second["chosen"], second["rejected"]) == (
        expected(keys[1], 1)["b"],
        expected(keys[1], 1)["a"],
    )
    assert second["meta"]["draw"] == 1
    assert second["meta"]["seeds"] == dict(zip("ab", pair_seeds(3, keys[1], 1, False), strict=True))
    assert skips[0]["meta"]["answers"] == expected(keys[2])
    assert [r["meta"]["seq"] for r in pairs + skips] == [1, 2, 3, 4]
    for record in pairs + skips:
        meta = record["meta"]
        assert meta["model"] == "fake-model" and meta["mode"] == "samples"
        assert meta["sampling"] == {"temp": 0.8, "top_p": 0.95, "max_tokens": 16}
        assert meta["seed"] == 3 and meta["prompt_source"].endswith(
            ".txt:" + str([p.key for p in app.prompts].index(meta["item"]) + 1)
        )
    # The fake prefers A when A's seed is even: agreement is whether the person chose that.
    for record in pairs:
        prefers = "a" if record["meta"]["seeds"]["a"] % 2 == 0 else "b"
        assert record["meta"]["agrees"] == (prefers == record["meta"]["verdict"])
    assert skips[0]["meta"]["agrees"] is None


async def test_edit_keeps_the_edited_answer_as_chosen_and_escape_cancels(tmp_path):
    app = collect_app(tmp_path)
    key = app.prompts[0].key
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, EditAnswerScreen))
        await pilot.press("escape")  # cancelled: nothing written
        await wait_until(pilot, lambda: not isinstance(app.screen, EditAnswerScreen))
        assert lines_of(tmp_path / "pairs.jsonl") == []

        await pilot.press("right")  # edit B this time
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, EditAnswerScreen))
        area = app.screen.query_one(TextArea)
        assert area.text == expected(key)["b"]
        await pilot.press(*" fixed")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.shown is not None and app.shown.prompt.key != key)
    (record,) = lines_of(tmp_path / "pairs.jsonl")
    assert record["chosen"] == expected(key)["b"] + " fixed"
    assert record["rejected"] == expected(key)["a"]
    assert record["meta"]["verdict"] == "edit"
    assert record["meta"]["edited"] == {"side": "b", "original": expected(key)["b"]}


async def test_an_edit_that_makes_the_answers_equal_is_refused(tmp_path):
    app = collect_app(tmp_path)
    key = app.prompts[0].key
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, EditAnswerScreen))
        area = app.screen.query_one(TextArea)
        area.text = expected(key)["b"]  # A edited into B's answer
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "Not saved" in screen_text(app))
        assert "the two answers are the same" in screen_text(app)
        assert app.shown.prompt.key == key  # still on this prompt
    assert lines_of(tmp_path / "pairs.jsonl") == []


async def test_undo_removes_the_last_verdict_and_shows_its_answers_again(tmp_path):
    app = collect_app(tmp_path)
    keys = [p.key for p in app.prompts]
    out = tmp_path / "pairs.jsonl"
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("a")
        await ready(pilot, app)
        await pilot.press("t")
        await ready(pilot, app)
        assert len(lines_of(out)) == 1 and len(lines_of(skipped_path(out))) == 1
        await pilot.press("u")  # the tie on prompt 2 goes; prompt 2 is shown again
        await wait_until(pilot, lambda: app.shown.prompt.key == keys[1])
        assert lines_of(skipped_path(out)) == []
        assert expected(keys[1])["b"] in screen_text(app) and "Undone: tie" in screen_text(app)
        await pilot.press("u")  # and the pair on prompt 1
        await wait_until(pilot, lambda: app.shown.prompt.key == keys[0])
        assert lines_of(out) == []
        assert not app.action_available("undo")  # nothing left: the key is greyed out
        await pilot.press("b")  # judged again, differently
        await wait_until(pilot, lambda: app.shown.prompt.key == keys[1])
        # Prompt 2 had been undone too: it comes next, from the worker again.
        await ready(pilot, app)
        assert expected(keys[1])["a"] in screen_text(app)
        assert progress(app.files, app.prompts).judged == 1
    (record,) = lines_of(out)
    assert record["meta"]["verdict"] == "b" and record["meta"]["seq"] == 1


async def test_a_worker_that_dies_loses_nothing_and_a_new_session_continues(tmp_path):
    app = collect_app(tmp_path, "--die-after", "3")
    out = tmp_path / "pairs.jsonl"
    keys = [p.key for p in app.prompts]
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("a")
        await ready(pilot, app)
        await pilot.press("b")  # the third request kills the worker mid-answer
        await wait_until(pilot, lambda: app.worker_gone is not None)
        text = " ".join(screen_text(app).split())  # the note wraps
        assert "generation worker stopped (exit code 9)" in text
        assert "run the same command again" in text
        assert not app.action_available("verdict") and not app.action_available("regenerate")
        await pilot.press("q")
    app.files.close()
    assert [r["meta"]["item"] for r in lines_of(out)] == keys[:2]

    again = collect_app(tmp_path)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot, again)
        assert again.shown.prompt.key == keys[2]  # where the first session stopped
        assert "judged 2/4" in screen_text(again)
        await pilot.press("a")
        await ready(pilot, again)
    again.files.close()
    assert [r["meta"]["item"] for r in lines_of(out)] == keys[:3]
    assert [r["meta"]["seq"] for r in lines_of(out)] == [1, 2, 3]


async def test_a_torn_last_line_is_dropped_and_said(tmp_path):
    out = tmp_path / "pairs.jsonl"
    app = collect_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("a")
        await ready(pilot, app)
    app.files.close()
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"prompt": "second question?", "chosen": "ans')  # kill -9 mid-write
    again = collect_app(tmp_path)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot, again)
        assert "Dropped a torn last line (45 bytes)" in " ".join(screen_text(again).split())
        assert again.shown.prompt.key == again.prompts[1].key
    again.files.close()
    assert out.read_bytes() == whole
    assert out.with_name("pairs.jsonl.torn").read_bytes().startswith(b'{"prompt": "second')


async def test_a_model_that_cannot_load_ends_the_app_with_its_message(tmp_path):
    app = collect_app(tmp_path, "--fail-load")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: not app.is_running, timeout=20)
    assert app.return_value == 2
    assert app.startup_error == "/no/such/model: no such model folder"


async def test_reference_vs_policy_labels_and_one_seed_for_both(tmp_path):
    app = collect_app(tmp_path, "--mode", "adapter")
    key = app.prompts[0].key
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        text = screen_text(app)
        assert "reference (base)" in text and "policy (adapter)" in text
        assert "reference vs policy" in text
        seed = pair_seeds(3, key, 0, same=True)[0]
        assert app.shown.seeds == {"a": seed, "b": seed}


def test_snapshot(tmp_path, monkeypatch, snap_compare):
    monkeypatch.chdir(tmp_path)
    prompts = load_prompts(prompts_file(Path(".")))
    files = VerdictFiles(Path("pairs.jsonl")).open()
    app = CollectApp(prompts, files, fake_worker(), seed=3, model="fake-model")

    async def run_before(pilot) -> None:
        await wait_until(pilot, lambda: app.action_available("verdict"), timeout=20)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
    files.close()


# ---------------------------------------------------------------------------------------------
# With the real worker on a tiny model


@pytest.mark.slow
async def test_real_worker_answers_are_mlx_lms_and_a_killed_worker_loses_nothing(
    tmp_path, llama_chatml
):
    import os
    import signal

    import mlx_lm

    from mlx_dpo.sampling import Sampling
    from tests.collect_models import mlx_lm_sample

    sampling = {"temp": 0.9, "top_p": 0.9, "max_tokens": 10}
    command = [
        sys.executable, "-m", "mlx_dpo.collect_worker", "--model", str(llama_chatml),
        "--temp", "0.9", "--top-p", "0.9", "--max-tokens", "10",
    ]  # fmt: skip
    prompts = load_prompts(prompts_file(tmp_path, ["what color is item 1?", "item 2?"]))
    out = tmp_path / "pairs.jsonl"

    def start() -> CollectApp:
        files = VerdictFiles(out).open()
        return CollectApp(prompts, files, command, seed=5, model=str(llama_chatml))

    app = start()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        first = dict(app.shown.answers)
        await pilot.press("a")
        await wait_until(pilot, lambda: app.shown.prompt.key == prompts[1].key)
        os.kill(app.worker.pid, signal.SIGKILL)  # the worker dies while answering prompt 2
        await wait_until(pilot, lambda: app.worker_gone is not None, timeout=20)
        await pilot.press("q")
    app.files.close()
    (record,) = lines_of(out)
    seeds = record["meta"]["seeds"]
    assert seeds == dict(zip("ab", pair_seeds(5, prompts[0].key, 0, same=False), strict=True))
    model, tokenizer = mlx_lm.load(str(llama_chatml))
    assert first == {
        side: mlx_lm_sample(model, tokenizer, prompts[0].messages, Sampling(**sampling), seed)
        for side, seed in seeds.items()
    }
    assert (record["chosen"], record["rejected"]) == (first["a"], first["b"])
    assert record["meta"]["sampling"] == sampling
    assert record["meta"]["model_preference"]["basis"] == "logp"

    again = start()
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot, again)
        assert again.shown.prompt.key == prompts[1].key
        await pilot.press("b")
        await wait_until(pilot, lambda: again.shown is None, timeout=20)
    again.files.close()
    assert [r["meta"]["item"] for r in lines_of(out)] == [p.key for p in prompts]


def test_the_collect_screen_loads_no_mlx():
    import subprocess

    code = (
        "import sys, mlx_dpo.tui.collect, mlx_dpo.cli.collect, mlx_dpo.cli.pairs\n"
        "print(sorted(m for m in sys.modules if m == 'mlx' or m.startswith(('mlx.', 'mlx_lm'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
