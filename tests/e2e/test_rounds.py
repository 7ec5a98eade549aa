"""Iterative DPO (mlx_dpo/rounds.py): two rounds on a tiny model and a tiny judge, where round
2 samples from round 1's policy and trains against it as the reference (log-probs checked
against mlx-lm loading round 1's adapter); the driver's decisions from the files (what is
finished, what continues, what is refused) with phases that only write files; and a run
killed with SIGKILL at two points that, run again, ends where an uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

from mlx_dpo import reference
from mlx_dpo.batching import collate
from mlx_dpo.cli import main
from mlx_dpo.config import build_config, load_config_file
from mlx_dpo.errors import UserError
from mlx_dpo.events import CONFIG_FILE, EventWriter, read_events, write_status
from mlx_dpo.journal import sidecar_path
from mlx_dpo.pairs import candidate_seed
from mlx_dpo.prompts import load_prompts
from mlx_dpo.rounds import (
    ROUNDS_FILE,
    RoundsSettings,
    pairs_argv,
    plan_round,
    round_config,
    run_rounds,
    sampling_seed,
)
from mlx_dpo.sampling import Sampling
from mlx_dpo.session import open_session
from mlx_dpo.trainer.batch_logps import batch_arrays
from tests.collect_models import TEMPLATE, balanced_judge, lines_of, mlx_lm_sample
from tests.interop import logps_of

SAMPLING = Sampling(1.0, 0.95, 6)
PROMPTS = [f"what color is item {i}?" for i in range(5)]
# The training settings of every round (a tiny model learns visibly in a few steps).
TRAIN = dict(
    iters=4,
    batch_size=2,
    learning_rate=5e-3,
    lora_rank=4,
    valid_fraction=0.25,
    eval_every=0,
    save_every=1,
)


@pytest.fixture(scope="module")
def inputs(llama_chatml, llama_plain, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rounds-inputs")
    (root / "prompts.txt").write_text("".join(p + "\n" for p in PROMPTS))
    (root / "judge_prompt.txt").write_text(TEMPLATE)
    return {
        "model": llama_chatml,
        "judge": balanced_judge(llama_plain, root / "judge"),
        "prompts": root / "prompts.txt",
        "judge_prompt": root / "judge_prompt.txt",
    }


def rounds_settings(inputs, rounds: int = 2) -> RoundsSettings:
    return RoundsSettings(
        rounds=rounds,
        prompts=str(inputs["prompts"]),
        judge=str(inputs["judge"]),
        candidates=3,
        sampling=SAMPLING,
        judge_prompt=str(inputs["judge_prompt"]),
    )


def rounds_flags(inputs, parent: Path, rounds: int = 2) -> list[str]:
    """The same rounds as rounds_settings + TRAIN, as a command line."""
    flags = ["train", "--rounds", str(rounds), "--prompts", str(inputs["prompts"])]
    flags += ["--judge", str(inputs["judge"]), "--judge-prompt", str(inputs["judge_prompt"])]
    flags += ["--model", str(inputs["model"]), "--adapter-path", str(parent)]
    flags += ["--candidates", "3", "--temp", "1.0", "--top-p", "0.95", "--max-tokens", "6"]
    for key, value in TRAIN.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return [*flags, "--no-tui"]


class InProcess:
    """The phases through the CLI in this process (the command does them in child processes:
    the kill test below runs it so)."""

    interrupted = False

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def make_pairs(self, round_, argv):
        self.calls.append(("pairs", round_.number))
        return main(argv)

    def train(self, round_, argv):
        self.calls.append(("train", round_.number, "--resume" in argv))
        return main(argv)


@pytest.fixture(scope="module")
def two_rounds(inputs, tmp_path_factory):
    parent = tmp_path_factory.mktemp("rounds") / "parent"
    config = build_config({}, dict(model=str(inputs["model"]), adapter_path=str(parent), **TRAIN))
    phases, lines = InProcess(), []
    with pytest.MonkeyPatch.context() as patch:  # the tests' cache (conftest's isolated_cache)
        patch.setenv(reference.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "cache"))
        code = run_rounds(config, rounds_settings(inputs), phases, lines.append)
    assert code == 0, lines
    return parent, phases, lines


def test_each_round_is_a_run_directory_trained_from_the_last(two_rounds):
    parent, phases, lines = two_rounds
    assert phases.calls == [("pairs", 1), ("train", 1, False), ("pairs", 2), ("train", 2, False)]
    record = json.loads((parent / ROUNDS_FILE).read_text())
    assert record["pairs_made"] == record["finished"] == [1, 2]
    assert set(record["seconds"]["2"]) == {"pairs", "train"}
    for number in (1, 2):
        run_dir = parent / f"round-{number}"
        assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
        assert lines_of(run_dir / "pairs.jsonl")  # the judge kept some pairs
        assert (run_dir / "adapters.safetensors").is_file()
    config = json.loads((parent / "round-2" / "adapter_config.json").read_text())
    assert config["init_adapter_provenance"]["path"] == str((parent / "round-1").resolve())
    assert config["data"] == str(parent / "round-2" / "pairs.jsonl")
    assert lines[-2] == f"done: 2 round(s); the last adapter is {parent / 'round-2'}"


def test_round_two_samples_from_round_one_policy(two_rounds, inputs):
    parent, _, _ = two_rounds
    candidates = lines_of(sidecar_path(parent / "round-2" / "pairs.jsonl", "candidates"))
    assert {c["settings"]["adapter"] for c in candidates} == {str(parent / "round-1")}
    policy, tokenizer = mlx_lm.load(str(inputs["model"]), adapter_path=str(parent / "round-1"))
    prompts = {p.key: p for p in load_prompts(inputs["prompts"])}
    for candidate in candidates[:3]:
        prompt = prompts[candidate["item"]]
        seed = candidate_seed(sampling_seed(0, 2), prompt.key, candidate["index"])
        assert candidate["seed"] == seed
        assert candidate["text"] == mlx_lm_sample(
            policy, tokenizer, prompt.messages, SAMPLING, seed
        )
    # Round 1 sampled from the base model, with round 1's own seeds.
    first = lines_of(sidecar_path(parent / "round-1" / "pairs.jsonl", "candidates"))
    assert {c["settings"]["adapter"] for c in first} == {None}
    assert {c["settings"]["seed"] for c in first} == {sampling_seed(0, 1)}


def cached_reference(run_dir: Path):
    """The reference log-probs a round's run cached for its train split, and that split."""
    session = open_session(load_config_file(run_dir / CONFIG_FILE), splits=("train", "valid"))
    split = session.splits["train"]
    key = reference.cache_key(session.weights_fingerprint, split)
    cached = reference.load_cached(key, len(split))
    assert cached is not None
    return cached, batch_arrays(collate(split.pairs))


def test_round_two_reference_is_round_one_final_policy(two_rounds, inputs):
    """Round 2's reference log-probs (as its run cached and trained against them) are round 1's
    final policy, computed by mlx-lm with round 1's adapter; round 1's are the base model's."""
    parent, _, _ = two_rounds
    base, _ = mlx_lm.load(str(inputs["model"]))
    policy, _ = mlx_lm.load(str(inputs["model"]), adapter_path=str(parent / "round-1"))
    (chosen, rejected), arrays = cached_reference(parent / "round-2")
    n = len(chosen)
    expected = logps_of(policy, arrays)
    np.testing.assert_allclose(chosen, expected[:n], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rejected, expected[n:], rtol=1e-5, atol=1e-4)
    # Round 1 moved the policy: the base model gives other numbers on the same pairs.
    assert np.abs(logps_of(base, arrays) - expected).max() > 1e-2
    (chosen, rejected), arrays = cached_reference(parent / "round-1")
    expected = logps_of(base, arrays)
    np.testing.assert_allclose(chosen, expected[: len(chosen)], rtol=1e-5, atol=1e-4)
    # The first step of round 2 is at its reference: the DPO loss is ln 2.
    steps = [e for e in read_events(parent / "round-2") if e["event"] == "step"]
    assert steps[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)


def test_run_start_names_the_round_and_the_earlier_results(two_rounds):
    parent, _, _ = two_rounds
    start = next(e for e in read_events(parent / "round-2") if e["event"] == "run_start")
    assert (start["round"], start["rounds"]) == (2, 2)
    first_end = read_events(parent / "round-1")[-1]
    (earlier,) = start["earlier_rounds"]
    assert earlier["round"] == 1 and earlier["status"] == "completed"
    assert earlier["final_eval"] == first_end["final_eval"] and earlier["final_eval"]["pairs"]
    first_start = next(e for e in read_events(parent / "round-1") if e["event"] == "run_start")
    assert first_start["earlier_rounds"] == []


def test_running_again_does_nothing_more(two_rounds, inputs):
    parent, _, _ = two_rounds
    files = sorted(p for p in parent.rglob("*") if p.is_file() and p.name != ROUNDS_FILE)
    before = {p: p.read_bytes() for p in files}
    config = build_config({}, dict(model=str(inputs["model"]), adapter_path=str(parent), **TRAIN))
    phases, lines = InProcess(), []
    assert run_rounds(config, rounds_settings(inputs), phases, lines.append) == 0
    assert phases.calls == []
    assert lines[:2] == [
        f"round 1/2: finished ({parent / 'round-1'})",
        f"round 2/2: finished ({parent / 'round-2'})",
    ]
    assert {p: p.read_bytes() for p in files} == before


# ---------------------------------------------------------------------------------------------
# The driver's decisions, with phases that only write the files a phase leaves


class FilePhases:
    """Pairs: `pairs` lines. Train: a run directory whose status is `state` (and a
    config.yaml, as a started run has). Each phase's exit status is set per round."""

    interrupted = False

    def __init__(self, pairs: int = 3, state: dict | None = None, codes: dict | None = None):
        self.pairs, self.state, self.codes = pairs, state or {}, codes or {}
        self.calls: list[tuple] = []

    def make_pairs(self, round_, argv):
        self.calls.append(("pairs", round_.number))
        code = self.codes.get(("pairs", round_.number), 0)
        if code == 0:
            record = {"prompt": "p", "chosen": "a", "rejected": "b"}
            round_.pairs.write_text((json.dumps(record) + "\n") * self.pairs)
        return code

    def train(self, round_, argv):
        self.calls.append(("train", round_.number, "--resume" in argv))
        (round_.run_dir / CONFIG_FILE).write_text("{}")
        state = self.state.get(round_.number, "finished")
        writer = EventWriter(round_.run_dir)
        writer.write("run_start", 0, train_pairs=self.pairs)
        status = {"finished": "completed", "stopped": "stopped"}.get(state, "failed")
        writer.write("run_end", 4, status=status, final_eval={"loss": 0.5})
        writer.close()
        write_status(round_.run_dir, state=state)
        return self.codes.get(("train", round_.number), 0 if state != "failed" else 1)


def fake_config(tmp_path: Path, **changes):
    values = dict(model="org/base", adapter_path=str(tmp_path / "parent"), seed=3)
    return build_config({}, {**values, **changes})


def fake_settings(tmp_path: Path, rounds: int = 2, **changes) -> RoundsSettings:
    values = dict(rounds=rounds, prompts=str(tmp_path / "p.txt"), judge="org/judge")
    return RoundsSettings(**{**values, **changes})


def test_round_k_starts_from_round_k_minus_one(tmp_path):
    config = fake_config(tmp_path)
    settings = fake_settings(tmp_path, rounds=3)
    first, third = plan_round(config, 1, 3), plan_round(config, 3, 3)
    assert first.start_adapter is None and third.start_adapter == str(tmp_path / "parent/round-2")
    assert "--adapter-path" not in pairs_argv(config, settings, first)
    argv = pairs_argv(config, settings, third)
    assert argv[argv.index("--adapter-path") + 1] == str(tmp_path / "parent/round-2")
    assert argv[argv.index("--seed") + 1] == str(sampling_seed(3, 3)) != str(sampling_seed(3, 1))
    assert argv[argv.index("--out") + 1] == str(tmp_path / "parent/round-3/pairs.jsonl")
    run = round_config(config, third)
    assert run.init_adapter == str(tmp_path / "parent/round-2")
    assert run.data == str(tmp_path / "parent/round-3/pairs.jsonl")
    assert run.adapter_path == str(tmp_path / "parent/round-3")
    # A user's --init-adapter is where round 1 starts (samples and trains from).
    started = fake_config(tmp_path, init_adapter="sft-adapter")
    # (the configuration makes a local path absolute: mlx_dpo/paths.py)
    assert plan_round(started, 1, 3).start_adapter == os.path.abspath("sft-adapter")
    assert round_config(started, plan_round(started, 2, 3)).init_adapter.endswith("round-1")


def test_more_rounds_later_continue_from_the_last(tmp_path):
    config = fake_config(tmp_path)
    phases = FilePhases()
    assert run_rounds(config, fake_settings(tmp_path, rounds=1), phases, print) == 0
    assert run_rounds(config, fake_settings(tmp_path, rounds=3), phases, print) == 0
    assert phases.calls == [
        ("pairs", 1), ("train", 1, False),
        ("pairs", 2), ("train", 2, False),
        ("pairs", 3), ("train", 3, False),
    ]  # fmt: skip
    round_file = json.loads((tmp_path / "parent/round-3/round.json").read_text())
    assert round_file["rounds"] == 3 and round_file["start_adapter"].endswith("round-2")
    assert [r["round"] for r in round_file["earlier_rounds"]] == [1, 2]
    assert round_file["earlier_rounds"][0]["final_eval"] == {"loss": 0.5}


def test_a_stopped_round_ends_the_rounds_and_continues_with_resume(tmp_path):
    config = fake_config(tmp_path)
    phases = FilePhases(state={1: "stopped"})
    lines: list[str] = []
    assert run_rounds(config, fake_settings(tmp_path), phases, lines.append) == 0
    assert phases.calls == [("pairs", 1), ("train", 1, False)]
    assert "training stopped and saved; run the same command again to continue" in lines[-1]
    # Again: round 1's run continues (--resume), its pairs are not made again.
    phases.state = {}
    assert run_rounds(config, fake_settings(tmp_path), phases, lines.append) == 0
    assert phases.calls[2:] == [("train", 1, True), ("pairs", 2), ("train", 2, False)]


def test_made_pairs_are_not_made_again(tmp_path):
    """Killed between the pairs and the run's start: the run starts, fresh."""
    config = fake_config(tmp_path)
    phases = FilePhases(codes={("train", 1): 137}, state={1: "starting"})
    assert run_rounds(config, fake_settings(tmp_path), phases, print) == 137
    (tmp_path / "parent/round-1" / CONFIG_FILE).unlink()  # killed while loading
    phases.state, phases.codes = {}, {}
    assert run_rounds(config, fake_settings(tmp_path, rounds=1), phases, print) == 0
    assert phases.calls == [("pairs", 1), ("train", 1, False), ("train", 1, False)]


def test_a_round_still_training_is_not_started_twice(tmp_path):
    """A trainer left running by its dashboard: the rounds wait for it, they do not resume
    the run beside it."""
    config = fake_config(tmp_path)
    phases = FilePhases(state={1: "training"})
    assert run_rounds(config, fake_settings(tmp_path), phases, print) == 0
    write_status(tmp_path / "parent/round-1", state="training", pid=os.getpid())
    with pytest.raises(UserError, match=r"round 1/2's training is still running \(pid"):
        run_rounds(config, fake_settings(tmp_path), phases, print)
    assert phases.calls == [("pairs", 1), ("train", 1, False)]
    # A trainer killed with its parent may stay a zombie until reaped: it is not running.
    zombie = subprocess.Popen(["true"])
    stat = Path(f"/proc/{zombie.pid}/stat")
    deadline = time.monotonic() + 10
    while stat.exists() and ") Z" not in stat.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)  # exited and not reaped (poll() would reap it)
    assert not stat.exists() or ") Z" in stat.read_text()
    write_status(tmp_path / "parent/round-1", state="training", pid=zombie.pid)
    phases.state = {}
    assert run_rounds(config, fake_settings(tmp_path), phases, print) == 0
    assert phases.calls[2] == ("train", 1, True)
    zombie.wait()


def test_a_failed_phase_ends_the_rounds_with_its_status(tmp_path):
    config = fake_config(tmp_path)
    phases = FilePhases(codes={("pairs", 1): 2})
    assert run_rounds(config, fake_settings(tmp_path), phases, print) == 2
    assert phases.calls == [("pairs", 1)]
    phases = FilePhases(state={2: "failed"})
    config = fake_config(tmp_path, adapter_path=str(tmp_path / "other"))
    assert run_rounds(config, fake_settings(tmp_path), phases, print) == 1
    assert phases.calls[-2:] == [("pairs", 2), ("train", 2, False)]


def test_a_judge_that_keeps_no_pair_is_a_user_error(tmp_path):
    class NoPairs(FilePhases):
        def make_pairs(self, round_, argv):
            code = super().make_pairs(round_, argv)
            verdict = json.dumps({"meta": {"verdict": "inconsistent"}})
            round_.pairs.with_name("pairs.skipped.jsonl").write_text(verdict + "\n")
            return code

    phases = NoPairs(pairs=0)
    with pytest.raises(
        UserError,
        match=r"round-1/pairs.jsonl: the judge kept no pair in round 1/2 \(of 1 comparisons: "
        r"1 inconsistent\); --judge org/judge cannot tell",
    ):
        run_rounds(fake_config(tmp_path), fake_settings(tmp_path), phases, print)
    assert phases.calls == [("pairs", 1)]


def test_other_settings_and_other_folders_are_refused(tmp_path):
    config = fake_config(tmp_path)
    run_rounds(config, fake_settings(tmp_path, rounds=1), FilePhases(), print)
    changed = fake_settings(tmp_path, rounds=1, judge="org/other", candidates=5)
    with pytest.raises(UserError, match=r"parent/rounds.json: these rounds were made with other "
                       r"settings \(candidates, judge differ\)"):  # fmt: skip
        run_rounds(config, changed, FilePhases(), print)
    with pytest.raises(UserError, match=r"\(lora differ\)"):
        run_rounds(
            fake_config(tmp_path, lora_rank=16), fake_settings(tmp_path), FilePhases(), print
        )
    # Training hyperparameters may change for rounds not yet started.
    assert (
        run_rounds(fake_config(tmp_path, beta=0.3), fake_settings(tmp_path), FilePhases(), print)
        == 0
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text("{}")
    with pytest.raises(UserError, match="holds a training run; --rounds needs a folder of its own"):
        run_rounds(
            dataclasses.replace(config, adapter_path=str(run_dir)),
            fake_settings(tmp_path),
            FilePhases(),
            print,
        )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and not a rounds folder"):
        run_rounds(
            dataclasses.replace(config, adapter_path=str(tmp_path / "mine")),
            fake_settings(tmp_path),
            FilePhases(),
            print,
        )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# kill -9 at two moments, then the same command again


def start_rounds(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mlx_dpo.cli", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the kill takes the phase's child too
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGSTOP the command's process group as soon as `ready()` (so it is caught there),
    then SIGKILL it."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the command ended before the moment to kill it"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGSTOP)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def texts(path: Path) -> list[tuple]:
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in lines_of(path)]


@pytest.mark.slow
def test_killed_rounds_continue_to_the_same_end(two_rounds, inputs, tmp_path):
    """Killed while round 1's candidates are written, and in round 2's training after a
    checkpoint; each time the same command continues. The end equals the uninterrupted run's:
    the same pairs in both rounds, the same round-2 adapter."""
    parent, log = tmp_path / "parent", tmp_path / "log.txt"
    argv = rounds_flags(inputs, parent)
    candidates = sidecar_path(parent / "round-1" / "pairs.jsonl", "candidates")
    kill_when(
        start_rounds(argv, log),
        lambda: candidates.exists() and candidates.read_bytes().count(b"\n") >= 2,
    )
    assert (parent / "round-1" / "pairs.jsonl").exists()
    assert not (parent / "round-1" / CONFIG_FILE).exists()  # killed in the pairs phase

    checkpoint = parent / "round-2" / "checkpoints" / "step-0000001"
    kill_when(start_rounds(argv, log), checkpoint.exists)
    status = json.loads((parent / "round-2" / "status.json").read_text())
    assert status["state"] != "finished"  # killed in round 2's training

    process = start_rounds(argv, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert "round 1/2: finished" in output and "round 2/2: continuing the training" in output
    assert "resumed from" in output

    reference_parent, _, _ = two_rounds
    for number in (1, 2):
        name = f"round-{number}/pairs.jsonl"
        assert texts(parent / name) == texts(reference_parent / name)
    resumed = mx.load(str(parent / "round-2" / "adapters.safetensors"))
    uninterrupted = mx.load(str(reference_parent / "round-2" / "adapters.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        np.testing.assert_allclose(np.array(resumed[key]), np.array(uninterrupted[key]), atol=1e-6)
