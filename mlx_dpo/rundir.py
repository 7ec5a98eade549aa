"""Owning a run directory: a run writes only into a folder that is new, empty or one of its
own runs, never into an init adapter, and holds an exclusive lock on it while it runs.

The lock is `flock` on RUN/run.lock, with the holder's pid written inside. The kernel drops
it when the process ends however it ends (kill -9 included), so a lock left by a killed run
is simply taken over; a second trainer on a live run is refused naming the live pid. Readers
(`mlx-dpo view`, the dashboard, `export`, `eval`) never take it. The file stays after the run:
it marks the folder as an mlx-dpo run directory (with config.yaml, which older runs have).

`--resume` continues the run that config.yaml describes: settings that change what the run
trains toward are refused with the list of differences, the others (RESUMABLE_CHANGES) are
allowed and recorded (mlx_dpo/trainer/resume.py checks the weights and tokens once loaded).
The batch size and the accumulation may change together when their product, the pairs per
optimizer step, stays: each step then sees the same pairs (mlx_dpo/batching.py,
epoch_steps), which is how a run that ran out of memory goes on (out_of_memory_resume).

Plain Python (the CLI checks a run directory before it loads anything or starts the
dashboard); the trainer takes the lock in mlx_dpo/trainer/run.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
from pathlib import Path
from typing import BinaryIO

from mlx_dpo import loss_catalog, paths
from mlx_dpo.config import CONFIG_KEYS, TrainConfig, load_config_file
from mlx_dpo.errors import UserError
from mlx_dpo.events import CONFIG_FILE, LOCK_FILE

# Files a folder may hold and still count as empty (the Finder's own).
IGNORED_FILES = (".DS_Store",)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def is_run_dir(folder: Path) -> bool:
    """Whether `folder` is one of mlx-dpo's run directories: it holds the lock file (written
    first by every run since it existed) or config.yaml (a run started here)."""
    return (folder / LOCK_FILE).is_file() or (folder / CONFIG_FILE).is_file()


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_run_dir(run_dir: Path, init_adapter: str | None = None) -> None:
    """Before anything is written: `run_dir` (--adapter-path) neither equals nor holds the
    init adapter, is not a file, and is new, empty or a run directory. A UserError otherwise."""
    if init_adapter:
        init = Path(init_adapter).expanduser().resolve()
        run = run_dir.expanduser().resolve()
        if _is_within(init, run):
            where = "is" if init == run else "is inside"
            raise UserError(
                f"--init-adapter {init_adapter} {where} --adapter-path {run_dir}: the run would "
                "overwrite the adapter it starts from; choose another --adapter-path"
            )
    if run_dir.is_file():
        raise UserError(f"--adapter-path {run_dir}: is a file; a run directory is a folder")
    if run_dir.is_dir() and not is_run_dir(run_dir):
        names = sorted(p.name for p in run_dir.iterdir() if p.name not in IGNORED_FILES)
        if names:
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            raise UserError(
                f"--adapter-path {run_dir}: holds files that are not an mlx-dpo run ({shown}); "
                "a run would overwrite them: choose a new or empty folder"
            )


def _unwritable(run_dir: Path, err: OSError) -> UserError:
    reason = os.strerror(err.errno) if err.errno else str(err)
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = "a file is in the way"
    return UserError(f"--adapter-path {run_dir}: cannot write there ({reason})")


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory and its lock file (the mark of a run directory), without
    taking the lock; a place that cannot be written is a UserError."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        os.close(fd)
        probe = run_dir / f".{LOCK_FILE}.probe"  # the lock file may be ours but read-only
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise _unwritable(run_dir, err) from None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _in_use(run_dir: Path, pid: int | None) -> UserError:
    holder = f"pid {pid}" if pid else "another process"
    return UserError(
        f"{run_dir}: a trainer is running on this run ({holder}); watch it with "
        f"`mlx-dpo view {run_dir}`, or stop it before starting another"
    )


class RunLock:
    """The exclusive lock of a run directory, held by the trainer for the run's lifetime.
    `taken_over` is the pid a killed run left in the lock file (None when there was none).
    The lock file is held as a file object: should a release be missed (an exception before
    the run's own `finally`), closing it on collection drops the lock too."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.file: BinaryIO | None = None
        self.taken_over: int | None = None

    def acquire(self) -> RunLock:
        make_run_dir(self.run_dir)
        file = open(self.run_dir / LOCK_FILE, "r+b")  # noqa: SIM115 (held for the run)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(file.fileno())
            file.close()
            raise _in_use(self.run_dir, pid) from None
        previous = _read_pid(file.fileno())
        if previous is not None and previous != os.getpid():
            self.taken_over = previous
        os.ftruncate(file.fileno(), 0)
        os.pwrite(file.fileno(), f"{os.getpid()}\n".encode(), 0)
        self.file = file
        return self

    def release(self) -> None:
        """Unlock; the pid is cleared (the file stays: it marks the run directory)."""
        if self.file is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.file.fileno(), 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        self.file.close()
        self.file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the live trainer that holds the run's lock (None: nobody holds it). Takes
    and drops the lock to find out, so it is only for a process that is about to start one."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_not_running(run_dir: Path) -> None:
    """A UserError when a trainer is running on `run_dir` (before a launcher writes there)."""
    pid = lock_holder(run_dir)
    if pid is not None:
        raise _in_use(run_dir, pid if pid > 0 else None)


def prepare_for_training(run_dir: Path, init_adapter: str | None = None) -> None:
    """Everything `mlx-dpo train` checks before it loads a model or opens the dashboard: the
    folder is ours to write (check_run_dir), writable (created, with its lock file) and not in
    use by a live trainer."""
    check_run_dir(run_dir, init_adapter)
    make_run_dir(run_dir)
    check_not_running(run_dir)


# ---- --resume: the run config.yaml describes ------------------------------------------------

# Settings a resumed run may change: they decide how long it runs, how often it evaluates and
# saves, how it is watched and how it computes (the same numbers), never what it trains
# toward. Every other setting is the run's own: changing it on --resume is refused.
RESUMABLE_CHANGES = (
    "iters",
    "epochs",
    "eval_every",
    "save_every",
    "memory_limit_gb",
    "pause_timeout_minutes",
    "reference",  # cached or live: the same log-probs
    "grad_checkpoint",  # recomputed activations: the same gradients
    "prefix_sharing",  # each prompt once or twice: the same log-probs
    "health",  # the checks that watch the run
    "adapter_path",  # the run directory itself, perhaps moved
    "trust_remote_code",  # granted on each command line, never saved
)


# How each optimizer step's pairs are split into micro-batches: resumable together when their
# product (the effective batch) stays (batch_split_problem).
BATCH_SPLIT = ("batch_size", "grad_accumulation")


def _shown_value(value: object) -> str:
    return "unset" if value is None else repr(value)


def micro_batch_losses(loss: str | list[str]) -> list[str]:
    """The run's losses whose terms are computed over each micro-batch rather than pair by
    pair, so that another split of the same step trains another objective: kto's KL estimate,
    bco_pair's running reward mean (advanced per micro-batch), aot's sorted quantiles."""
    coupled = loss_catalog.UNPAIRED | loss_catalog.SORTING | {"bco_pair"}
    return [name for name in loss_catalog.loss_names(loss) if name in coupled]


def _split(config: TrainConfig) -> str:
    return f"batch {config.batch_size} × accumulation {config.grad_accumulation}"


def batch_split_problem(saved: TrainConfig, config: TrainConfig) -> str | None:
    """Why `config`'s batch size and accumulation cannot continue the run `saved` describes
    (None: they can, or neither changed). They can when the pairs per optimizer step stay the
    same and the loss is a mean over pairs: every step then sees the same pairs with the same
    gradient (to float rounding)."""
    if all(getattr(saved, k) == getattr(config, k) for k in BATCH_SPLIT):
        return None
    sizes = (saved.batch_size, config.batch_size)
    if not all(isinstance(size, int) for size in sizes):  # `auto`: chosen once loaded
        return f"batch_size: {_shown_value(sizes[0])} → {_shown_value(sizes[1])}"
    before = saved.batch_size * saved.grad_accumulation
    after = config.batch_size * config.grad_accumulation
    if before != after:
        return (
            f"effective batch: {before} pairs per optimizer step ({_split(saved)}) → {after} "
            f"({_split(config)})"
        )
    coupled = micro_batch_losses(config.loss)
    if coupled:
        return (
            f"{_split(saved)} → {_split(config)}: the same {after} pairs per optimizer step, "
            f"but {', '.join(coupled)} computes over each micro-batch, so another split trains "
            "another objective"
        )
    return None


def resume_changes(saved: TrainConfig, config: TrainConfig) -> tuple[list[str], list[str]]:
    """(refused, allowed): the settings of `config` that differ from the run's saved ones,
    each as "key: saved → now". A batch size and accumulation that change the effective
    batch are one refused line with both (batch_split_problem)."""
    refused, allowed = [], []
    before, after = saved.to_dict(), config.to_dict()
    split_problem = batch_split_problem(saved, config)
    for key in CONFIG_KEYS:
        if before[key] == after[key]:
            continue
        line = f"{key}: {_shown_value(before[key])} → {_shown_value(after[key])}"
        if key in BATCH_SPLIT and split_problem is not None:
            if split_problem not in refused:
                refused.append(split_problem)
        elif key in RESUMABLE_CHANGES or key in BATCH_SPLIT:
            allowed.append(line)
        else:
            refused.append(line)
    return refused, allowed


def smaller_split(batch_size: int, grad_accumulation: int) -> tuple[int, int] | None:
    """A smaller batch with the accumulation that keeps the effective batch: the largest batch
    of at most half this one that divides batch × accumulation (4 × 2 → 2 × 4, 6 × 1 → 3 × 2,
    3 × 1 → 1 × 3); None at batch 1."""
    if batch_size <= 1:
        return None
    effective = batch_size * grad_accumulation
    smaller = max(b for b in range(1, batch_size // 2 + 1) if effective % b == 0)
    return smaller, effective // smaller


def out_of_memory_resume(config: TrainConfig, run_dir: str | Path) -> str:
    """The sentence that ends an out-of-memory message: the exact command that continues the
    run with less memory and changes nothing it trains (resume_changes allows it). Half the
    batch with twice the accumulation (the same pairs per optimizer step) while the batch can
    shrink and the loss is a mean over pairs; else --grad-checkpoint; else what needs a new
    run."""
    command = f"mlx-dpo train --resume --adapter-path {shlex.quote(paths.shown(run_dir))}"
    split = None
    if isinstance(config.batch_size, int) and not micro_batch_losses(config.loss):
        split = smaller_split(config.batch_size, config.grad_accumulation)
    if split is not None:
        effective = config.batch_size * config.grad_accumulation
        also = "" if config.grad_checkpoint else " (add --grad-checkpoint to use less still)"
        return (
            f"To continue with the same {effective} pairs per optimizer step in smaller "
            f"batches: {command} --batch-size {split[0]} --grad-accumulation {split[1]}{also}"
        )
    if not config.grad_checkpoint:
        return f"To continue with less memory: {command} --grad-checkpoint"
    return (
        "A shorter --max-length or --quantize 4 needs a new run (another --adapter-path; "
        "`mlx-dpo train --plan` shows what fits)"
    )


def check_resumed_config(run_dir: Path, config: TrainConfig) -> list[str]:
    """The allowed changes of a resumed run's settings (to be recorded), after refusing the
    others with their list: --resume continues the run that config.yaml describes."""
    saved_file = run_dir / CONFIG_FILE
    if not saved_file.is_file():
        raise UserError(
            f"{run_dir}: no run has started here (no {CONFIG_FILE}); "
            "run the same command without --resume"
        )
    saved = load_config_file(saved_file, run_record=True)
    refused, allowed = resume_changes(saved, config)
    if refused:
        raise UserError(
            f"--resume continues the run {saved_file} describes; these settings would change "
            f"what it trains (start a new run with another --adapter-path instead):",
            refused,
        )
    return allowed


def claim_run_dir(
    run_dir: Path, config: TrainConfig, resume: bool, is_main: bool = True
) -> tuple[RunLock, list[str]]:
    """The trainer's start in its run directory: checked (check_run_dir), locked, and on
    resume its settings compared with config.yaml. Returns the lock (held on rank 0; other
    ranks only make the folder) and the lines to record: a lock taken over from a killed run,
    the settings a resume changed. A UserError, with nothing written, otherwise."""
    lock = RunLock(run_dir)
    if not is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        return lock, []
    check_run_dir(run_dir, config.init_adapter)
    lock.acquire()
    try:
        notes = []
        if lock.taken_over is not None:
            notes.append(
                f"took over the run's lock from pid {lock.taken_over}, which is no longer running"
            )
        if resume:
            changes = check_resumed_config(run_dir, config)
            notes += [f"resumed with a changed setting: {change}" for change in changes]
    except BaseException:
        lock.release()
        raise
    return lock, notes
