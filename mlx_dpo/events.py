"""The run directory: event stream, status file and control channel.

This module is the contract between the trainer and anything that watches it (the dashboard,
`mlx-dpo view`, scripts). It is plain Python, with no MLX and no Textual, so both sides import it.

Layout (docs/architecture.md, "Run directory"):
    metrics.jsonl   one JSON object a line, append-only: {"event", "step", "time", ...}
    status.json     the latest state, replaced atomically
    control.jsonl   commands to the trainer: {"command": "pause"|"resume"|"checkpoint"|"stop"}

Event fields beyond event/step/time (numbers that are not finite are null):
    run_start  model, data, run_dir, total_steps, epochs, train_pairs, valid_pairs, test_pairs,
               batch_size, grad_accumulation, beta, loss, reference ("cached"|"live"),
               prefix_sharing (bool: each prompt computed once), trainable_parameters,
               total_parameters, truncated {split: {pairs, prompt, response}}, world_size,
               resumed_from (step or null), pid, config (dict), quantized_base (bool: the
               base weights are quantized, as loaded or by --quantize; the dashboard offers
               export's --dequantize only then),
               memory_plan {total_gb, limit_gb, limit_source, verdict ("fits" | "tight" |
               "will not fit"), components_gb {name: GB}, activations_checkpointed_gb, batch,
               suggestions [{change, total_gb, note}], forward {pairs, total_gb}: the
               reference and evaluation passes' batch} (mlx_dpo.memory.arithmetic.plan_dict),
               data_shape (the shapes the data was read as, "+"-joined: "standard",
               "conversational", "implicit-prompt", "conversations+prompt",
               "ultrafeedback-binarized", "hh-text", "question+system", "fields";
               mlx_dpo.shapes), data_sources [{path, revision (Hub commit or null),
               splits {the set's split name: shape}, weight}], valid_source ("split": the
               data's own; "carved N": N pairs carved from train; null: none);
               in a round of `train --rounds` (mlx_dpo/rounds.py, its round.json): round,
               rounds, earlier_rounds [{round, status, step, train_pairs, valid_pairs,
               final_eval, best_eval}]
    reference  split, done, total (pairs), cached (true when read from the on-disk cache),
               eta (seconds left, null until known): the reference precompute's progress,
               written as `progress` is (at its start, every few seconds, at its end with done
               == total; once, done == total, when read from the cache). It is the progress
               of the "reference" phase: no `progress` event repeats it.
    progress   phase ("loading" | "tokenizing"; "reference" is read the same way), done,
               total, unit: how far a long phase before the first step is; written at its
               start (done 0), every few seconds, and at its end (done == total). "loading":
               the model's weights read into memory, unit "MB"; "tokenizing": the pairs of one
               split, unit "<split> pairs" (a split read from the token cache has none). They
               come before run_start (the model and data are loaded first). The dashboard
               shows the counts and an ETA from the rate since the phase began.
    step       epoch, METRIC_NAMES, the run's EXTRA_METRIC_NAMES (below), grad_norm,
               learning_rate, tokens_per_second, pairs_per_second (completions a second for
               kto), peak_memory_gb (MLX's peak since the first step), elapsed (seconds since
               this trainer process began the run, loading included and time spent paused
               left out: a resumed run counts from 0 again), eta (seconds)
    eval       split, pairs (completions for kto), METRIC_NAMES, the run's EXTRA_METRIC_NAMES,
               and for pairs PREFERENCE_METRIC_NAMES (below)

METRIC_NAMES are TRL's and in every step and eval event; for a reference-free loss `kl` is
null (no reference), for kto the rewards/logps of chosen and rejected are the means over the
desirable and undesirable completions (null when there are none) and rewards/accuracies the
share of completions on the side of KTO's reference point the loss pushes them to (there are
no pairs). EXTRA_METRIC_NAMES appear only for the losses that have them
(mlx_dpo.loss_catalog.extra_metrics): orpo nll_loss (the chosen answers' token-mean NLL),
log_odds_ratio (mean logσ of the log odds ratio), log_odds_chosen (its mean); bco_pair
bco_reward_shift (the running mean reward the rewards are shifted by); kto count/desirable and
count/undesirable (completions of each kind in the step or split). PREFERENCE_METRIC_NAMES,
in eval events of pair losses (and `mlx-dpo eval`): the share of pairs whose chosen answer the
policy itself gives a higher log-prob than the rejected one, summed over the response tokens
(logps/preference_accuracy) and per token (logps/preference_accuracy_per_token).
    checkpoint path
    state      state: "paused" | "resumed" | "stopping" | "evaluating" | "training"
    export     status: "started" | "done" | "failed", path, message
    health     kind, severity ("warning" | "error" | "off"), message, suggestion, values (dict).
               "off" is not a finding: the check `kind` does not run in this run, and
               message says why (e.g. a validation split under health.valid_min_pairs)
    log        level ("info" | "warning" | "error"), message
    samples    prompts [{prompt, reference, policy}], seconds, max_tokens, source: greedy
               answers to a few fixed prompts, to watch the model learn. Written once at the
               start as step 0 with the reference model's answers (`reference`; not again on
               resume), then at each evaluation and at the end of a finished run with the
               policy's (`policy`; `reference` is left out there: the step-0 answer of the
               same prompt, matched by position, stands). seconds: what generating them cost;
               source: "valid" (the validation split's prompts) or the prompts file.
               mlx_dpo/trainer/samples.py says when a round is skipped to bound the cost.
    run_end    status ("completed" | "stopped" | "failed"), error, adapter_path,
               last_checkpoint, final_eval (dict or null), best_eval (dict or null), elapsed
               (as in `step`)

status.json: state (STATES), step, total_steps, epoch, pid, model, last_checkpoint, error,
auto_stop_at (while paused with no dashboard attached: when the run will save and stop by
itself, seconds since the epoch; null otherwise), updated. The trainer writes its stdout and
stderr to train.log in the run directory when the dashboard runs it.

control.jsonl lines carry the sender's pid: a paused run counts a live sender as a dashboard
attached (mlx_dpo/trainer/control.py). run.lock: the trainer's lock while it runs, its pid
inside (mlx_dpo/rundir.py); its presence marks an mlx-dpo run directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
CONTROL_FILE = "control.jsonl"
CONFIG_FILE = "config.yaml"
ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
CHECKPOINT_DIR = "checkpoints"
# Inside checkpoints/step-N/, beside ADAPTER_FILE and ADAPTER_CONFIG_FILE:
OPTIMIZER_FILE = "optimizer.safetensors"
# The loss's state between steps (bco_pair's running reward mean), in a checkpoint and beside
# the run's adapters; only for losses that have state.
LOSS_STATE_FILE = "loss_state.safetensors"
CHECKPOINT_STATE_FILE = "state.json"
LOG_FILE = "train.log"
# The resolved config the dashboard hands to the trainer process it starts (`mlx-dpo train`).
LAUNCH_CONFIG_FILE = ".launch.yaml"
# Held (flock) by the trainer while it runs; its pid inside (mlx_dpo/rundir.py).
LOCK_FILE = "run.lock"
# The environment variable in which `mlx-dpo train` hands its pid to the trainer it launches
# with the dashboard: the trainer counts that dashboard as attached while it lives.
DASHBOARD_PID_ENV = "MLX_DPO_DASHBOARD_PID"

EVENTS = (
    "run_start",
    "reference",
    "step",
    "eval",
    "checkpoint",
    "state",
    "export",
    "health",
    "log",
    "progress",
    "samples",
    "run_end",
)
COMMANDS = ("pause", "resume", "checkpoint", "stop")

# How a library function reports a long phase as it goes: progress(phase, done, total, unit),
# the fields of a `progress` event. The trainer writes them (mlx_dpo/trainer/progress.py).
Progress = Callable[[str, float, float, str], None]

# States written to status.json["state"].
STATES = (
    "starting",
    "computing_reference",
    "training",
    "paused",
    "evaluating",
    "stopping",
    "finished",
    "stopped",
    "failed",
)
FINAL_STATES = ("finished", "stopped", "failed")
# run_end status -> the final state in status.json.
RUN_END_STATES = {"completed": "finished", "stopped": "stopped", "failed": "failed"}

# The TRL metric names every step and eval event carries.
LOSS = "loss"
REWARDS_CHOSEN = "rewards/chosen"
REWARDS_REJECTED = "rewards/rejected"
REWARDS_MARGINS = "rewards/margins"
REWARDS_ACCURACIES = "rewards/accuracies"
LOGPS_CHOSEN = "logps/chosen"
LOGPS_REJECTED = "logps/rejected"
KL = "kl"
METRIC_NAMES = (
    LOSS,
    REWARDS_CHOSEN,
    REWARDS_REJECTED,
    REWARDS_MARGINS,
    REWARDS_ACCURACIES,
    LOGPS_CHOSEN,
    LOGPS_REJECTED,
    KL,
)
# Metrics only some losses have (see the docstring); step and eval events carry the run's.
NLL_LOSS = "nll_loss"
LOG_ODDS_RATIO = "log_odds_ratio"
LOG_ODDS_CHOSEN = "log_odds_chosen"
BCO_REWARD_SHIFT = "bco_reward_shift"
COUNT_DESIRABLE = "count/desirable"
COUNT_UNDESIRABLE = "count/undesirable"
EXTRA_METRIC_NAMES = (
    NLL_LOSS,
    LOG_ODDS_RATIO,
    LOG_ODDS_CHOSEN,
    BCO_REWARD_SHIFT,
    COUNT_DESIRABLE,
    COUNT_UNDESIRABLE,
)
# The policy's own log-prob preference (see the docstring): evaluations of pairs only.
LOGPS_PREFERENCE_ACCURACY = "logps/preference_accuracy"
LOGPS_PREFERENCE_ACCURACY_PER_TOKEN = "logps/preference_accuracy_per_token"
PREFERENCE_METRIC_NAMES = (LOGPS_PREFERENCE_ACCURACY, LOGPS_PREFERENCE_ACCURACY_PER_TOKEN)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: non-finite numbers are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename over `path`,
    so a reader or a crash never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries to disk: without it a power cut soon after a rename may
    leave the old name, or none (the file's own fsync does not cover its directory entry).
    A file system that cannot fsync a folder is left as it is."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back): files written through a
    temporary get the permissions a plain open() would give them."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(finite_or_none(obj), indent=2) + "\n")


class EventWriter:
    """Appends events to metrics.jsonl. Each line is written whole and flushed."""

    def __init__(self, run_dir: str | os.PathLike, world_size: int = 1, enabled: bool = True):
        """`enabled=False` (ranks other than 0 of a distributed run) builds the records but
        writes nothing."""
        self.path = Path(run_dir) / METRICS_FILE
        self.world_size = world_size
        self._handle = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held for the run)

    def write(self, event: str, step: int, **fields: Any) -> dict:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        record = {"event": event, "step": int(step), "time": time.time(), **fields}
        if event == "run_start":
            record.setdefault("world_size", self.world_size)
        if self._handle is not None:
            self._handle.write(json.dumps(finite_or_none(record)) + "\n")
            self._handle.flush()
        return record

    def sync(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            # A full disk fails the last flush; readers skip a torn last line.
            with contextlib.suppress(OSError):
                self._handle.close()


def truncate_events_after(run_dir: str | os.PathLike, step: int) -> None:
    """Drop events past `step` (a resumed run recomputes them exactly), keeping run_start
    events and every complete line up to there. Replaced atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for event in parse_lines(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if event.get("step", 0) <= step or event.get("event") == "run_start":
            kept.append(json.dumps(event))
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# The type of each field the docstring above lists: a reader takes a field of another type
# as absent (None), so a well-formed line with wrong types (a hand edit, another tool, a
# damaged file) cannot crash the dashboard or a script (conform_event).
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53


def _numbers(value: Any) -> bool:
    return isinstance(value, dict) and all(v is None or _is_number(v) for v in value.values())


def _strings(*names: str) -> Callable[[Any], bool]:
    return lambda item: (
        isinstance(item, dict)
        and all(item.get(n) is None or isinstance(item[n], str) for n in names)
    )


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def _typed(**checks: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A mapping whose listed fields, where present and not None, pass their checks."""
    return lambda value: (
        isinstance(value, dict)
        and all(value.get(k) is None or check(value[k]) for k, check in checks.items())
    )


_STR: Callable[[Any], bool] = lambda v: isinstance(v, str)  # noqa: E731
_BOOL: Callable[[Any], bool] = lambda v: isinstance(v, bool)  # noqa: E731
_DICT: Callable[[Any], bool] = lambda v: isinstance(v, dict)  # noqa: E731
_METRICS = {name: _is_number for name in METRIC_NAMES}
# final_eval, best_eval: an evaluation's metrics, with its step, pairs and split.
_EVAL = _typed(step=_is_whole, pairs=_is_number, split=_STR, **_METRICS)
_ROUND = _typed(round=_is_whole, status=_STR, step=_is_whole, train_pairs=_is_whole,
                valid_pairs=_is_whole, final_eval=_EVAL, best_eval=_EVAL)  # fmt: skip
_PLAN = _typed(total_gb=_is_number, limit_gb=_is_number, limit_source=_STR, verdict=_STR,
               components_gb=_numbers, activations_checkpointed_gb=_is_number,
               suggestions=_list_of(_typed(change=_STR, total_gb=_is_number, note=_STR)),
               forward=_typed(pairs=_is_whole, total_gb=_is_number))  # fmt: skip
EVENT_FIELD_TYPES: dict[str, dict[str, Callable[[Any], bool]]] = {
    "*": {"step": _is_whole, "time": _is_number},
    "run_start": {
        **dict.fromkeys(("model", "data", "run_dir", "reference", "data_shape", "valid_source"), _STR),
        **dict.fromkeys(("total_steps", "train_pairs", "valid_pairs", "test_pairs", "batch_size",
                         "grad_accumulation", "trainable_parameters", "total_parameters",
                         "world_size", "resumed_from", "pid", "round", "rounds"), _is_whole),
        "epochs": _is_number, "beta": _is_number,
        "loss": lambda v: isinstance(v, str) or _list_of(_STR)(v),
        "prefix_sharing": _BOOL, "quantized_base": _BOOL, "config": _DICT,
        "truncated": lambda v: isinstance(v, dict) and all(_numbers(x) for x in v.values()),
        "memory_plan": _PLAN,
        "data_sources": _list_of(_typed(path=_STR, revision=_STR, splits=_DICT, weight=_is_number)),
        "earlier_rounds": _list_of(_ROUND),
    },
    "reference": {"split": _STR, "done": _is_number, "total": _is_number, "cached": _BOOL,
                  "eta": _is_number},
    "progress": {"phase": _STR, "done": _is_number, "total": _is_number, "unit": _STR},
    "step": {**_METRICS, **dict.fromkeys(("epoch", "grad_norm", "learning_rate",
             "tokens_per_second", "pairs_per_second", "peak_memory_gb", "elapsed", "eta"),
             _is_number)},
    "eval": {**_METRICS, "split": _STR, "pairs": _is_number},
    "checkpoint": {"path": _STR},
    "state": {"state": _STR},
    "export": {"status": _STR, "path": _STR, "message": _STR},
    "health": {"kind": _STR, "severity": _STR, "message": _STR, "suggestion": _STR,
               "values": _DICT},
    "log": {"level": _STR, "message": _STR},
    "samples": {"prompts": _list_of(_strings("prompt", "reference", "policy")),
                "seconds": _is_number, "max_tokens": _is_number, "source": _STR},
    "run_end": {"status": _STR, "error": _STR, "adapter_path": _STR, "last_checkpoint": _STR,
                "final_eval": _EVAL, "best_eval": _EVAL, "elapsed": _is_number},
}  # fmt: skip


def conform_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event with every field of the wrong type (EVENT_FIELD_TYPES) set to None, as a
    missing field reads; numbers too large for a float are None too."""
    checks = {**EVENT_FIELD_TYPES["*"], **EVENT_FIELD_TYPES.get(event["event"], {})}
    conformed = dict(event)
    for name, check in checks.items():
        value = conformed.get(name)
        if value is not None and not (check(value) and _fits_a_float(value)):
            conformed[name] = None
    return conformed


def _fits_a_float(value: Any) -> bool:
    """JSON integers have no size limit; every number shown is formatted as a float."""
    if isinstance(value, dict):
        return all(_fits_a_float(v) for v in value.values())
    if isinstance(value, list):
        return all(_fits_a_float(v) for v in value)
    return not isinstance(value, int) or abs(value) < 2**1000


def parse_lines(lines: Iterable[str]) -> list[dict]:
    """Events from complete lines; a torn or foreign line is skipped, not fatal, and a field
    of the wrong type reads as absent (conform_event)."""
    events = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or a number of thousands of digits
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            events.append(conform_event(event))
    return events


def read_events(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return parse_lines(path.read_text(encoding="utf-8", errors="replace").splitlines())


class EventFollower:
    """Reads metrics.jsonl incrementally: each `poll()` returns the events of the complete lines
    appended since the last call. A partial last line waits for its newline. If the file shrinks
    (a resumed run rewrote it), `reset` is set and reading starts over."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS_FILE
        self.offset = 0
        self.reset = False
        self._pending = b""

    def poll(self) -> list[dict]:
        self.reset = False
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset = 0
            self._pending = b""
            self.reset = True
        if size == self.offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(size - self.offset)
        self.offset += len(chunk)
        data = self._pending + chunk
        complete, _, self._pending = data.rpartition(b"\n")
        if not complete:
            return []
        return parse_lines(complete.decode("utf-8", errors="replace").splitlines())


def write_status(run_dir: str | os.PathLike, **status: Any) -> None:
    status.setdefault("updated", time.time())
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)


def read_status(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, not JSON, not UTF-8
        return {}
    return status if isinstance(status, dict) else {}


def send_command(run_dir: str | os.PathLike, command: str, **fields: Any) -> None:
    """Append a command for the trainer (the dashboard's side of the control channel)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; expected one of {COMMANDS}")
    # The pid tells a paused trainer that this sender (a dashboard) is still there.
    record = {"command": command, "time": time.time(), "pid": os.getpid(), **fields}
    path = Path(run_dir) / CONTROL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # One small write with O_APPEND: whole lines even with several writers.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


class ControlReader:
    """The trainer's side of the control channel: new commands since the last poll.
    Commands written before the trainer started (a previous run's) are skipped."""

    def __init__(self, run_dir: str | os.PathLike, skip_existing: bool = True):
        self.path = Path(run_dir) / CONTROL_FILE
        self.offset = 0
        if skip_existing and self.path.exists():
            self.offset = self.path.stat().st_size

    def poll(self) -> list[str]:
        return [record["command"] for record in self.poll_records()]

    def poll_records(self) -> list[dict[str, Any]]:
        """The new commands as written: {"command", "time", "pid", ...}."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self.offset:
            self.offset = min(self.offset, size)
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        complete, _, _ = data.rpartition(b"\n")
        self.offset += len(complete) + (1 if complete else 0)
        records = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("command") in COMMANDS:
                records.append(record)
        return records
