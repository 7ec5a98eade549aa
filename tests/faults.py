"""`mlx-dpo` with a kill -9 injected at an exact point of the real code path, for the
reliability tests:

    python -m tests.faults eval:N -- ARGS...          killed in the N-th evaluation, between
                                                      its first and second batch
    python -m tests.faults write:NAME:N -- ARGS...    killed while the N-th temporary file for
                                                      NAME.safetensors is half on disk

Nothing in mlx_dpo knows about this: the points are reached by wrapping the functions the
trainer calls, in this process only."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_eval(nth: int) -> None:
    from mlx_dpo.trainer import evaluation, run

    evaluate_split, row_sums = run.evaluate_split, evaluation.row_sums
    seen = {"evals": 0, "batches": 0, "inside": False}

    def counting_evaluate(*args, **kwargs):
        seen.update(evals=seen["evals"] + 1, batches=0, inside=True)
        try:
            return evaluate_split(*args, **kwargs)
        finally:
            seen["inside"] = False

    def counting_rows(*args, **kwargs):
        if seen["inside"]:
            seen["batches"] += 1
            if seen["evals"] == nth and seen["batches"] == 2:
                die()
        return row_sums(*args, **kwargs)

    run.evaluate_split = counting_evaluate
    # evaluate_split looks row_sums up in its module: only calls made inside it count.
    evaluation.row_sums = counting_rows


def kill_in_write(name: str, nth: int) -> None:
    """The atomic writer fsyncs its temporary file before renaming it into place: cut the file
    in half there and die, as a power cut part-way through the write would."""
    from mlx_dpo import checkpoints

    fsync = os.fsync
    seen = {"writes": 0}

    def cutting_fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.name.startswith(f".{name}.") and path.suffix == ".safetensors":
            seen["writes"] += 1
            if seen["writes"] == nth:
                os.truncate(fd, os.fstat(fd).st_size // 2)
                die()
        fsync(fd)

    checkpoints.os.fsync = cutting_fsync


def main() -> int:
    point, separator, *args = sys.argv[1:]
    assert separator == "--", __doc__
    kind, *where = point.split(":")
    if kind == "eval":
        kill_in_eval(int(where[0]))
    elif kind == "write":
        kill_in_write(where[0], int(where[1]))
    else:
        raise SystemExit(f"unknown fault point {point!r}")
    from mlx_dpo.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
