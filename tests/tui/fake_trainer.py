"""A stand-in trainer for the dashboard tests: no MLX, the same run-directory protocol.

It writes run_start, step, checkpoint, state and run_end events and status.json, and acts on
the dashboard's commands from control.jsonl exactly as the real trainer does: pause (wait
for resume), resume, checkpoint (save after the current step), stop (save, end, exit).

    python fake_trainer.py RUN_DIR [--steps N] [--step-time SECONDS] [--resume]

--resume goes on from the last checkpoint as `mlx-dpo train --resume` does: the stream is cut
back to it and a run_start with resumed_from is appended.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mlx_dpo.events import (
    ADAPTER_FILE,
    CHECKPOINT_DIR,
    RUN_END_STATES,
    ControlReader,
    EventWriter,
    read_events,
    truncate_events_after,
    write_status,
)

sys.path.insert(0, str(Path(__file__).parent))
from tui_runs import DATA, MODEL, step_metrics  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--step-time", type=float, default=0.02)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    first_step = 1
    resumed_from = None
    if args.resume:
        checkpoints = [e["step"] for e in read_events(run_dir) if e["event"] == "checkpoint"]
        resumed_from = max(checkpoints)
        first_step = resumed_from + 1
        truncate_events_after(run_dir, resumed_from)
    control = ControlReader(run_dir)
    events = EventWriter(run_dir)
    started = time.time()
    status = {"model": MODEL, "total_steps": args.steps, "pid": os.getpid(), "error": None}
    last_checkpoint = None

    def set_status(state: str, step: int) -> None:
        write_status(
            run_dir,
            state=state,
            step=step,
            epoch=step / args.steps,
            last_checkpoint=last_checkpoint,
            **status,
        )

    def save_checkpoint(step: int) -> None:
        nonlocal last_checkpoint
        path = run_dir / CHECKPOINT_DIR / f"{step:07d}"
        path.mkdir(parents=True, exist_ok=True)
        (path / ADAPTER_FILE).write_bytes(b"fake adapters")
        (run_dir / ADAPTER_FILE).write_bytes(b"fake adapters")
        last_checkpoint = str(path)
        events.write("checkpoint", step, path=str(path))
        print(f"saved checkpoint {path}", flush=True)

    def end(status_name: str, step: int) -> int:
        (run_dir / ADAPTER_FILE).write_bytes(b"fake adapters")
        events.write(
            "run_end",
            step,
            status=status_name,
            error=None,
            adapter_path=str(run_dir),
            last_checkpoint=last_checkpoint,
            final_eval=None,
            best_eval=None,
            elapsed=time.time() - started,
        )
        set_status(RUN_END_STATES[status_name], step)
        print(f"run {status_name} at step {step}", flush=True)
        return 0

    def stop(step: int) -> int:
        events.write("state", step, state="stopping")
        set_status("stopping", step)
        save_checkpoint(step)
        return end("stopped", step)

    set_status("starting", first_step - 1)
    events.write(
        "run_start",
        first_step - 1,
        model=MODEL,
        data=DATA,
        run_dir=str(run_dir),
        total_steps=args.steps,
        epochs=1,
        train_pairs=100,
        valid_pairs=0,
        test_pairs=0,
        batch_size=1,
        grad_accumulation=1,
        beta=0.1,
        loss="sigmoid",
        reference="cached",
        truncated={},
        resumed_from=resumed_from,
        pid=os.getpid(),
        config={},
    )
    set_status("training", first_step - 1)
    for step in range(first_step, args.steps + 1):
        for command in control.poll():
            if command == "stop":
                return stop(step - 1)
            if command == "checkpoint":
                save_checkpoint(step - 1)
            if command == "pause":
                events.write("state", step - 1, state="paused")
                set_status("paused", step - 1)
                while True:
                    commands = control.poll()
                    if "stop" in commands:
                        return stop(step - 1)
                    if "checkpoint" in commands:
                        save_checkpoint(step - 1)
                    if "resume" in commands:
                        events.write("state", step - 1, state="resumed")
                        set_status("training", step - 1)
                        break
                    time.sleep(0.01)
        time.sleep(args.step_time)
        elapsed = time.time() - started
        events.write(
            "step",
            step,
            epoch=step / args.steps,
            elapsed=elapsed,
            eta=elapsed / step * (args.steps - step),
            **step_metrics(step),
        )
        set_status("training", step)
        print(f"step {step} loss {step_metrics(step)['loss']:.4f}", flush=True)
    return end("completed", args.steps)


if __name__ == "__main__":
    sys.exit(main())
