"""`mlx-dpo` with a kill -9 injected at an exact point of the real code path, for the
reliability tests:

    python -m tests.faults eval:N -- ARGS...          killed in the N-th evaluation, between
                                                      its first and second batch
    python -m tests.faults write:NAME:N -- ARGS...    killed while the N-th temporary file for
                                                      NAME.safetensors is half on disk
    python -m tests.faults rename:N -- ARGS...        export killed just before its N-th rename
    python -m tests.faults slow:PHASE:S -- ARGS...    each batch of the reference precompute
                                                      (PHASE reference) or of an evaluation
                                                      (PHASE eval) takes S seconds longer
    python -m tests.faults oom:N -- ARGS...           Metal runs out of memory in the first
                                                      micro-batch of optimizer step N

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


def kill_at_rename(nth: int) -> None:
    """An export killed just before its n-th rename into place (mlx_dpo/export.py's
    os.rename, export_gguf.py's os.replace): with --overwrite over an existing folder, 1 is
    moving the old folder aside, 2 putting the new one in; for --gguf, 1 is the file's."""
    from mlx_dpo import export, export_gguf

    seen = {"renames": 0}

    class Os:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def rename(src, dst):
            count_or_die()
            os.rename(src, dst)

        @staticmethod
        def replace(src, dst):
            count_or_die()
            os.replace(src, dst)

    def count_or_die() -> None:
        seen["renames"] += 1
        if seen["renames"] == nth:
            die()

    export.os = export_gguf.os = Os()


def slow_batches(phase: str, seconds: float) -> None:
    """Every batch of the reference precompute or of an evaluation takes `seconds` longer,
    so that a signal reliably arrives in the middle of the phase."""
    import time

    from mlx_dpo.trainer import evaluation, run

    if phase == "reference":
        compute_reference = run.compute_reference

        def slow_compute_reference(*args, **kwargs):
            compute = compute_reference(*args, **kwargs)

            def slow(positions):
                time.sleep(seconds)
                return compute(positions)

            return slow

        run.compute_reference = slow_compute_reference
    elif phase == "eval":
        rows_logps = evaluation.rows_logps

        def slow_rows(*args, **kwargs):
            time.sleep(seconds)
            return rows_logps(*args, **kwargs)

        evaluation.rows_logps = slow_rows
    else:
        raise SystemExit(f"unknown phase {phase!r}")


# What MLX raises when Metal cannot allocate a buffer in the middle of a step.
METAL_OUT_OF_MEMORY = (
    "[metal::malloc] Attempting to allocate 12884901888 bytes which is greater than the maximum "
    "allowed buffer size of 10737418240 bytes."
)


def out_of_memory_at_step(compiled_step, nth: int):
    """`compiled_step` (mlx_dpo/trainer/step.py) whose accumulate raises Metal's out-of-memory
    error in the first micro-batch of optimizer step `nth` (1-based), as a too-large batch
    does: the steps before it are applied (counted by apply), the step itself never is."""

    def running_out(*args, **kwargs):
        accumulate, apply = compiled_step(*args, **kwargs)
        applied = {"steps": 0}

        def accumulate_or_run_out(*inner, **kw):
            if applied["steps"] == nth - 1:
                raise RuntimeError(METAL_OUT_OF_MEMORY)
            return accumulate(*inner, **kw)

        def counting_apply(*inner, **kw):
            applied["steps"] += 1
            return apply(*inner, **kw)

        return accumulate_or_run_out, counting_apply

    return running_out


def main() -> int:
    point, separator, *args = sys.argv[1:]
    assert separator == "--", __doc__
    kind, *where = point.split(":")
    if kind == "eval":
        kill_in_eval(int(where[0]))
    elif kind == "write":
        kill_in_write(where[0], int(where[1]))
    elif kind == "rename":
        kill_at_rename(int(where[0]))
    elif kind == "slow":
        slow_batches(where[0], float(where[1]))
    elif kind == "oom":
        from mlx_dpo.trainer import step

        step.compiled_step = out_of_memory_at_step(step.compiled_step, int(where[0]))
    else:
        raise SystemExit(f"unknown fault point {point!r}")
    from mlx_dpo.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
