"""Iterative DPO: `mlx-dpo train --rounds N --prompts P --judge J --adapter-path PARENT`.

Round k samples answers from round k−1's policy (round 1: the base model, or the base with
--init-adapter), a local judge model compares them in both orders (`mlx-dpo pairs`,
mlx_dpo/pairs.py), and an ordinary run trains on the pairs kept, starting from round k−1's
adapter with round k−1's policy, frozen, as the reference: --init-adapter's semantics
(mlx_dpo/session.py). That is the iterative recipe of Xu et al. 2023 ("Some things
are more CRINGE than others"), Yuan et al. 2024 (self-rewarding language models) and Xiong et
al. 2024 (iterative preference learning from human feedback): each round's reference is the
previous round's model, so each round's KL leash is to where the last one ended, not to the
base. docs/collect.md says more.

    PARENT/
      rounds.json   the settings every round shares, the rounds whose pairs are made and
                    those finished, seconds per phase (replaced atomically after each phase)
      round-k/      an ordinary run directory (adapters, checkpoints, metrics.jsonl, ...)
        pairs.jsonl (+ pairs.skipped.jsonl, pairs.candidates.jsonl)   the round's pairs
        round.json  which round this run is and the earlier rounds' results; the trainer
                    copies them into its run_start (`round_fields`), for the dashboard

This driver loads no model: each phase is a child process (`python -m mlx_dpo.cli pairs ...`,
then `... train ...`), so one copy of the weights is in memory at a time and a phase that
fails or is killed takes nothing else with it. Running the same command again continues: a
finished round (its status.json says so) is skipped; a round whose pairs are not all made
continues its pairs files (their own resume); a round whose run has started (config.yaml)
continues with `train --resume`. So a kill at any moment loses at most the candidate or verdict
being written, or the steps since the round's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlx_dpo.config import TrainConfig, save_config
from mlx_dpo.errors import UserError
from mlx_dpo.events import (
    CONFIG_FILE,
    FINAL_STATES,
    LAUNCH_CONFIG_FILE,
    LOSS,
    REWARDS_ACCURACIES,
    REWARDS_MARGINS,
    atomic_write_json,
    read_events,
    read_status,
)
from mlx_dpo.prompts import derive_seed
from mlx_dpo.rundir import make_run_dir
from mlx_dpo.sampling import DEFAULT_CANDIDATES, Sampling

# Exit statuses of the phases' commands (mlx_dpo/cli/exit_codes.py): a user error, and Ctrl-C
# outside a run.
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
ROUNDS_FILE = "rounds.json"
ROUND_FILE = "round.json"
PAIRS_FILE = "pairs.jsonl"
ROUNDS_VERSION = 1
# TrainConfig keys a rounds folder cannot take: every round's data is its own pairs file.
DATA_KEYS = ("data", "data_split", "data_config", "data_revision", "valid_split", "fields")


@dataclass(frozen=True)
class RoundsSettings:
    """What the rounds add to a training configuration."""

    rounds: int
    prompts: str
    judge: str
    candidates: int = DEFAULT_CANDIDATES
    sampling: Sampling = field(default_factory=Sampling)
    judge_prompt: str | None = None  # a file; None: mlx_dpo/judge.py JUDGE_PROMPT


@dataclass(frozen=True)
class Round:
    """Round `number` of `rounds` under `parent`; `start_adapter` is the adapter it samples
    from and trains from (round k−1's run directory; for round 1 the --init-adapter, if any)."""

    number: int
    rounds: int
    parent: Path
    start_adapter: str | None

    @property
    def run_dir(self) -> Path:
        return round_dir(self.parent, self.number)

    @property
    def pairs(self) -> Path:
        return self.run_dir / PAIRS_FILE

    @property
    def label(self) -> str:
        return f"round {self.number}/{self.rounds}"


def round_dir(parent: Path, number: int) -> Path:
    return parent / f"round-{number}"


def plan_round(config: TrainConfig, number: int, rounds: int) -> Round:
    parent = Path(config.adapter_path or ".")
    start = str(round_dir(parent, number - 1)) if number > 1 else config.init_adapter
    return Round(number, rounds, parent, start)


def round_config(config: TrainConfig, round_: Round) -> TrainConfig:
    """The round's run: the rounds' training settings on the round's pairs, in its folder,
    from its start adapter."""
    return dataclasses.replace(
        config,
        data=str(round_.pairs),
        adapter_path=str(round_.run_dir),
        init_adapter=round_.start_adapter,
    )


def sampling_seed(seed: int, number: int) -> int:
    """Round k's sampling seed: each round draws fresh candidates (from --seed and k)."""
    return derive_seed(seed, "round", number)


def pairs_argv(config: TrainConfig, settings: RoundsSettings, round_: Round) -> list[str]:
    """`mlx-dpo pairs` arguments for the round (after `python -m mlx_dpo.cli`)."""
    sampling = settings.sampling
    argv = [
        "pairs",
        settings.prompts,
        "--model",
        str(config.model),
        "--judge",
        settings.judge,
        "--out",
        str(round_.pairs),
        "--candidates",
        str(settings.candidates),
        "--temp",
        str(sampling.temp),
        "--top-p",
        str(sampling.top_p),
        "--max-tokens",
        str(sampling.max_tokens),
        "--seed",
        str(sampling_seed(config.seed, round_.number)),
    ]
    if round_.start_adapter:
        argv += ["--adapter-path", round_.start_adapter]
    if settings.judge_prompt:
        argv += ["--judge-prompt", settings.judge_prompt]
    if config.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


def train_argv(round_: Round, resume: bool, trust_remote_code: bool = False) -> list[str]:
    """`mlx-dpo train` arguments for the round's run (its settings are in the launch file;
    remote code is granted on the command line only, config.save_config)."""
    argv = ["train", str(round_.run_dir / LAUNCH_CONFIG_FILE), "--no-tui"]
    if resume:
        argv += ["--resume", "--adapter-path", str(round_.run_dir)]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


# ---------------------------------------------------------------------------------------------
# Checking the settings


def check_rounds(config: TrainConfig, settings: RoundsSettings) -> None:
    """The rounds' settings, before anything starts; a UserError names the flag."""
    if settings.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {settings.rounds}")
    if not config.model:
        raise UserError("--rounds needs --model (the base model every round starts from)")
    if not config.adapter_path:
        raise UserError(
            "--rounds needs --adapter-path PARENT: the rounds' folder (PARENT/round-1, ...), "
            "where running the same command again continues"
        )
    given = [key for key in DATA_KEYS if getattr(config, key)]
    if given:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise UserError(
            f"{flags}: --rounds makes each round's data (PARENT/round-k/{PAIRS_FILE}) from "
            "--prompts; leave the data out"
        )
    if settings.candidates < 2:
        raise UserError(f"--candidates must be at least 2, got {settings.candidates}")
    if settings.sampling.temp == 0:
        raise UserError("--temp 0 (greedy) makes every candidate the same; use --temp > 0")
    if settings.judge_prompt and not Path(settings.judge_prompt).expanduser().is_file():
        raise UserError(f"{settings.judge_prompt}: no such file (--judge-prompt)")


def _resolved(spec: str | None) -> str | None:
    """A local path as an absolute path (the same folder named another way is the same
    model); a Hub id as it is."""
    if spec and Path(spec).expanduser().exists():
        return str(Path(spec).expanduser().resolve())
    return spec


def shared_settings(config: TrainConfig, settings: RoundsSettings) -> dict[str, Any]:
    """What every round of a folder shares: the base model and start, the LoRA shape (each
    round continues the last one's adapter), where the pairs come from and how they are
    judged. The training hyperparameters are not in it: a round not yet started may use new
    ones (a started round's run keeps its own, as any resumed run does)."""
    judge_prompt_sha = None
    if settings.judge_prompt:
        data = Path(settings.judge_prompt).expanduser().read_bytes()
        judge_prompt_sha = hashlib.sha256(data).hexdigest()
    return {
        "model": _resolved(config.model),
        "quantize": config.quantize,
        "init_adapter": _resolved(config.init_adapter),
        "lora": {
            "rank": config.lora_rank,
            "scale": config.lora_scale,
            "layers": config.lora_layers,
            "keys": config.lora_keys,
        },
        "prompts": _resolved(settings.prompts),
        "judge": _resolved(settings.judge),
        "judge_prompt_sha256": judge_prompt_sha,
        "candidates": settings.candidates,
        "sampling": settings.sampling.as_dict(),
        "seed": config.seed,
    }


# ---------------------------------------------------------------------------------------------
# PARENT/rounds.json


class RoundsRecord:
    """PARENT/rounds.json: the shared settings, the rounds asked for, the rounds whose pairs
    are made and those finished, and seconds per phase. Replaced atomically on each change."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    @classmethod
    def open(cls, parent: Path, settings: dict[str, Any], rounds: int) -> RoundsRecord:
        """The folder's record, made if the folder is new; a folder made with other settings,
        or one that holds something else, is refused (nothing the user owns is overwritten)."""
        path = parent / ROUNDS_FILE
        if path.exists():
            data = _read_record(path)
            changed = sorted(k for k in settings if data["settings"].get(k) != settings[k])
            if changed:
                raise UserError(
                    f"{path}: these rounds were made with other settings ({', '.join(changed)} "
                    "differ); continue them with the same settings, or choose another "
                    "--adapter-path"
                )
        else:
            if (parent / CONFIG_FILE).exists():
                raise UserError(
                    f"{parent}: holds a training run; --rounds needs a folder of its own"
                )
            if parent.exists() and any(parent.iterdir()):
                raise UserError(
                    f"{parent}: not empty and not a rounds folder (no {ROUNDS_FILE}); choose "
                    "another --adapter-path"
                )
            data = {
                "version": ROUNDS_VERSION,
                "settings": settings,
                "pairs_made": [],
                "finished": [],
                "seconds": {},
            }
        record = cls(path, data)
        record.data["rounds"] = rounds
        record.save()
        return record

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)

    def has(self, what: str, number: int) -> bool:
        return number in self.data[what]

    def mark(self, what: str, number: int) -> None:
        """`what` is "pairs_made" or "finished"."""
        if number not in self.data[what]:
            self.data[what] = sorted([*self.data[what], number])
            self.save()

    def add_seconds(self, number: int, phase: str, seconds: float) -> None:
        phases = self.data["seconds"].setdefault(str(number), {})
        phases[phase] = round(phases.get(phase, 0.0) + seconds, 3)
        self.save()


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(
            f"{path}: not a rounds record ({err}); choose another --adapter-path"
        ) from None
    keys = ("version", "settings", "pairs_made", "finished", "seconds")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise UserError(f"{path}: not a rounds record; choose another --adapter-path")
    if data["version"] != ROUNDS_VERSION:
        raise UserError(f"{path}: made by another version of mlx-dpo ({data['version']})")
    return data


# ---------------------------------------------------------------------------------------------
# Reading a round's results


@dataclass
class PairCounts:
    pairs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # by verdict


def count_pairs(pairs: Path) -> PairCounts:
    """The pairs file's pairs and its skipped file's verdicts (complete lines only)."""
    counts = PairCounts(pairs=len(_json_lines(pairs)))
    for record in _json_lines(pairs.with_name(pairs.stem + ".skipped.jsonl")):
        verdict = str((record.get("meta") or {}).get("verdict"))
        counts.skipped[verdict] = counts.skipped.get(verdict, 0) + 1
    return counts


def _json_lines(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line: the pairs command cuts it off when it continues
        if isinstance(value, dict):
            records.append(value)
    return records


def round_result(run_dir: Path, number: int) -> dict[str, Any]:
    """A round's run as its events tell it: its pairs, steps, end and evaluations."""
    start: dict[str, Any] = {}
    end: dict[str, Any] = {}
    for event in read_events(run_dir):
        if event.get("event") == "run_start":
            start = event
        elif event.get("event") == "run_end":
            end = event
    return {
        "round": number,
        "status": end.get("status"),
        "step": end.get("step"),
        "train_pairs": start.get("train_pairs"),
        "valid_pairs": start.get("valid_pairs"),
        "final_eval": end.get("final_eval"),
        "best_eval": end.get("best_eval"),
    }


def round_fields(run_dir: Path) -> dict[str, Any]:
    """run_start's `round`, `rounds` and `earlier_rounds` (round_result of each) when the run
    is a round of `train --rounds` (its round.json says so); nothing otherwise."""
    try:
        data = json.loads((run_dir / ROUND_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("round"), int):
        return {}
    return {key: data.get(key) for key in ("round", "rounds", "earlier_rounds")}


def write_round_file(round_: Round, settings: RoundsSettings) -> None:
    earlier = [round_result(round_dir(round_.parent, n), n) for n in range(1, round_.number)]
    atomic_write_json(
        round_.run_dir / ROUND_FILE,
        {
            "round": round_.number,
            "rounds": round_.rounds,
            "parent": str(round_.parent),
            "prompts": settings.prompts,
            "judge": settings.judge,
            "start_adapter": round_.start_adapter,
            "earlier_rounds": earlier,
        },
    )


def _alive(pid: object) -> bool:
    """Whether a process with this id runs (signal 0 checks without sending anything). A
    killed trainer whose parent died too may stay a zombie until something reaps it: where
    /proc says so (Linux), it is not running."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): launchd reaps orphans at once
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def eval_summary(result: dict[str, Any] | None) -> str:
    """`eval loss 0.6512, accuracy 75%, margin 0.081` (the parts that are numbers)."""
    if not result:
        return "no evaluation (no validation split)"
    parts = []
    for name, key, spec in (
        ("loss", LOSS, ".4f"),
        ("accuracy", REWARDS_ACCURACIES, ".0%"),
        ("margin", REWARDS_MARGINS, ".3f"),
    ):
        value = result.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{name} {value:{spec}}")
    return "eval " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Running the rounds


class Phases(Protocol):
    """How a round's phases run: each returns its exit status. `interrupted`: Ctrl-C came
    while a phase ran, so no further phase starts."""

    interrupted: bool

    def make_pairs(self, round_: Round, argv: list[str]) -> int: ...

    def train(self, round_: Round, argv: list[str]) -> int: ...


class ChildProcesses:
    """Each phase as `python -m mlx_dpo.cli ARGV` in a child process, its lines on this
    console. Ctrl-C reaches the child too (it saves and ends, as it does alone); this process
    waits for it, then no further phase starts (`interrupted`)."""

    def __init__(self) -> None:
        self.interrupted = False

    def command(self, argv: list[str]) -> list[str]:
        return [sys.executable, "-m", "mlx_dpo.cli", *argv]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run(self, argv: list[str]) -> int:
        process = subprocess.Popen(self.command(argv), env=self.environment())
        return self.wait(process)

    def wait(self, process: subprocess.Popen) -> int:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                self.interrupted = True

    def make_pairs(self, round_: Round, argv: list[str]) -> int:
        return self.run(argv)

    def train(self, round_: Round, argv: list[str]) -> int:
        return self.run(argv)


@dataclass(frozen=True)
class RoundsCommand:
    """What every round of one `train --rounds` command works with: the run's config and round
    settings, the record of what is done, how the phases run, and where its lines go."""

    config: TrainConfig
    settings: RoundsSettings
    record: RoundsRecord
    phases: Phases
    say: Callable[[str], None]


def run_rounds(
    config: TrainConfig,
    settings: RoundsSettings,
    phases: Phases,
    say: Callable[[str], None] = print,
) -> int:
    """Run (or continue) the rounds in config.adapter_path; the exit status: 0 when every
    round is finished or a round stopped (running the same command again continues), else
    the status of the phase that failed. User errors raise UserError before anything starts."""
    check_rounds(config, settings)
    record = RoundsRecord.open(
        Path(config.adapter_path or "."), shared_settings(config, settings), settings.rounds
    )
    command = RoundsCommand(config, settings, record, phases, say)
    for number in range(1, settings.rounds + 1):
        round_ = plan_round(config, number, settings.rounds)
        code = run_round(command, round_)
        if code is not None:
            return code
    last = round_dir(record.path.parent, settings.rounds)
    say(f"done: {settings.rounds} round(s); the last adapter is {last}")
    say(f"chat with it: mlx_lm.chat --model {config.model} --adapter-path {last}")
    return 0


def run_round(command: RoundsCommand, round_: Round) -> int | None:
    """One round from wherever it stands; None once it is finished, else the exit status to
    end with (the round stopped, failed or was interrupted)."""
    config, settings, record = command.config, command.settings, command.record
    phases, say = command.phases, command.say
    run_dir = round_.run_dir
    status = read_status(run_dir)
    if status.get("state") == "finished":
        record.mark("finished", round_.number)  # a kill may have come before the record
        say(f"{round_.label}: finished ({run_dir})")
        return None
    if status.get("state") not in FINAL_STATES and _alive(status.get("pid")):
        raise UserError(
            f"{run_dir}: {round_.label}'s training is still running (pid {status['pid']}, "
            f"left running by its dashboard?); watch it with mlx-dpo view {run_dir} and run "
            "this command again once it has ended"
        )
    started = (run_dir / CONFIG_FILE).exists()
    if not started and not record.has("pairs_made", round_.number):
        code = make_round_pairs(command, round_)
        if code is not None:
            return code
    make_run_dir(run_dir)
    write_round_file(round_, settings)
    save_config(round_config(config, round_), run_dir / LAUNCH_CONFIG_FILE)
    source = round_.start_adapter or "the base model"
    say(
        f"{round_.label}: {'continuing the training' if started else 'training'} on "
        f"{count_pairs(round_.pairs).pairs} pairs in {run_dir}, from {source} (its reference)"
    )
    tic = time.monotonic()
    code = phases.train(round_, train_argv(round_, started, config.trust_remote_code))
    record.add_seconds(round_.number, "train", time.monotonic() - tic)
    state = read_status(run_dir).get("state")
    if state == "finished" and not phases.interrupted:
        record.mark("finished", round_.number)
        seconds = record.data["seconds"].get(str(round_.number), {})
        timing = ", ".join(f"{phase} {value:.1f}s" for phase, value in seconds.items())
        result = round_result(run_dir, round_.number)
        say(f"{round_.label} finished ({timing}): {eval_summary(result['final_eval'])}")
        return None
    again = "run the same command again to continue"
    if state == "stopped":
        say(f"{round_.label}: training stopped and saved; {again}")
        return code
    if code == 0 and state not in (None, "failed"):
        say(
            f"{round_.label}: the training goes on in the background (mlx-dpo view {run_dir}); "
            f"once it has ended, {again}"
        )
        return 0
    if code == EXIT_USER_ERROR:
        say(f"{round_.label}: the training was refused (the error above); fix it, then {again}")
    else:
        say(f"{round_.label}: the training ended with exit status {code}; {again}")
    return code or 1


def make_round_pairs(command: RoundsCommand, round_: Round) -> int | None:
    """The round's pairs phase; None once its pairs are made, else the exit status to end
    with. A round whose judge kept no pair cannot train: a UserError says so."""
    config, settings, record = command.config, command.settings, command.record
    phases, say = command.phases, command.say
    source = f"{round_.start_adapter}'s policy" if round_.start_adapter else "the base model"
    say(
        f"{round_.label}: {settings.candidates} answers per prompt from {source}, judged by "
        f"{settings.judge}, into {round_.pairs}"
    )
    # Made as a run directory (its lock file marks it): its training may then write beside
    # the pairs (mlx_dpo/rundir.py refuses folders holding files of other origins).
    make_run_dir(round_.run_dir)
    tic = time.monotonic()
    code = phases.make_pairs(round_, pairs_argv(config, settings, round_))
    record.add_seconds(round_.number, "pairs", time.monotonic() - tic)
    if code == 0 and phases.interrupted:
        code = EXIT_INTERRUPTED
    if code != 0:
        say(
            f"{round_.label}: making the pairs ended with exit status {code}; run the same "
            "command again to continue"
        )
        return code
    counts = count_pairs(round_.pairs)
    if counts.pairs == 0:
        skipped = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.skipped.items()))
        total = sum(counts.skipped.values())
        raise UserError(
            f"{round_.pairs}: the judge kept no pair in {round_.label} (of {total} "
            f"comparisons: {skipped or 'none'}); --judge {settings.judge} cannot tell these "
            "answers apart: use an instruction-tuned judge, more --candidates or a higher --temp"
        )
    record.mark("pairs_made", round_.number)
    return None
