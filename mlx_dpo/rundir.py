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

Plain Python (the CLI checks a run directory before it loads anything or starts the
dashboard); the trainer takes the lock in mlx_dpo/trainer/run.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import BinaryIO

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


def _shown_value(value: object) -> str:
    return "unset" if value is None else repr(value)


def resume_changes(saved: TrainConfig, config: TrainConfig) -> tuple[list[str], list[str]]:
    """(refused, allowed): the settings of `config` that differ from the run's saved ones,
    each as "key: saved → now"."""
    refused, allowed = [], []
    before, after = saved.to_dict(), config.to_dict()
    for key in CONFIG_KEYS:
        if before[key] == after[key]:
            continue
        line = f"{key}: {_shown_value(before[key])} → {_shown_value(after[key])}"
        (allowed if key in RESUMABLE_CHANGES else refused).append(line)
    return refused, allowed


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
