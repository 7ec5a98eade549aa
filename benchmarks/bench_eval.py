"""What `mlx-dpo eval` costs on a real model, against the forward half of training.

    python benchmarks/bench_eval.py [--model FILE.gguf] [--pairs 40] [--batch-size 4]
                                    [--before /path/to/old/.venv/bin/python]

On SmolLM2-135M-Instruct (tests/conftest.py real_model_path(); `scripts/setup.sh test` fetches
it), with the first --pairs pairs of tests/data/facts/train.jsonl as both the training data and
the evaluated split:

1. a training run of one epoch over them (`mlx-dpo train`, samples off): its steps' time,
   from the step events' `elapsed`;
2. the forward half of those steps: one policy forward pass over the same batches, and a
   forward + backward pass over them, timed here after a warm-up batch (their ratio is the forward share of a step);
3. `evaluate_command` of the model alone and of the run's adapter, with this tree's code
   ("after") with a cold reference cache (an empty MLX_DPO_CACHE) and a warm one (the same
   folder again), and with --before's interpreter (another checkout's code, no cache use),
   interleaved. Each evaluation runs in a process of its own; the model's loading is timed
   apart (evaluate.open_session wrapped) and left out of "eval".

Prints a table and the load average (`uptime`) before and after. Work files are under
benchmarks/.work/eval/ (ignored by git). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx_dpo  # noqa: F401  (first: it loads the system BLAS before MLX, 35x faster on CPU)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work" / "eval"
FACTS = REPO / "tests" / "data" / "facts" / "train.jsonl"


def default_model() -> Path:
    folder = os.environ.get("MLX_DPO_TEST_MODELS") or Path.home() / ".cache/mlx-dpo/test-models"
    return Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------------------------
# In a process of its own: one evaluation, or the forward/backward timing


def one_eval(model: str, adapter: str | None, data: str, batch_size: int) -> dict:
    """evaluate_command with its model loading timed apart (works on old and new code)."""
    from mlx_dpo import evaluate

    loading = []
    open_session = evaluate.open_session

    def timed_open_session(*args, **kwargs):
        tic = time.perf_counter()
        session = open_session(*args, **kwargs)
        loading.append(time.perf_counter() - tic)
        return session

    evaluate.open_session = timed_open_session
    tic = time.perf_counter()
    result = evaluate.evaluate_command(
        None if adapter else model, adapter, data, "test", batch_size=batch_size
    )
    total = time.perf_counter() - tic
    return {"total": total, "load": loading[0], "eval": total - loading[0], "result": result}


def forward_and_backward(model: str, adapter: str, data: str, batch_size: int) -> dict:
    """Seconds of one policy forward pass over the split's training batches (in the split's
    order, batch_size pairs), and of a forward + backward pass over the same batches."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_dpo.config import TrainConfig
    from mlx_dpo.session import open_session
    from mlx_dpo.trainer.batch_logps import batch_arrays, row_sums

    config = TrainConfig(model=model, data=data, batch_size=batch_size)
    session = open_session(config, splits=("test",), adapter_path=adapter)
    session.model.eval()  # as the training step's reference and eval run it: no dropout
    split = session.splits["test"]
    batches = [
        batch_arrays(session.collate_split(split, list(range(i, min(i + batch_size, len(split))))))
        for i in range(0, len(split), batch_size)
    ]

    def forward(arrays):
        return row_sums(session, arrays).sums

    forward_backward = nn.value_and_grad(session.model, lambda arrays: forward(arrays).sum())
    timings = {}
    for name, work in (("forward", forward), ("forward_backward", forward_backward)):
        mx.eval(work(batches[0]))  # warm up: a first call pays for MLX's setup
        tic = time.perf_counter()
        for arrays in batches:
            mx.eval(work(arrays))
        timings[name] = time.perf_counter() - tic
    return timings


# ---------------------------------------------------------------------------------------------
# The driver


def in_process(python: str, mode: str, *args: str, cache: Path | None = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    if cache is not None:
        env["MLX_DPO_CACHE"] = str(cache)
    done = subprocess.run(
        [python, str(Path(__file__).resolve()), mode, *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=WORK,  # not the checkout: each interpreter imports its own installed tree
    )
    if done.returncode != 0:
        sys.exit(f"{mode} with {python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_steps(model: Path, data: Path, pairs: int, batch_size: int) -> dict:
    """One epoch of training: the steps' seconds from the step events (the first step's own
    time counted as the mean of the others: it also compiles the step)."""
    run_dir = WORK / "run"
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    steps = -(-pairs // batch_size)
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLX_DPO_CACHE=str(WORK / "cache-train"))
    args = ["train", "--model", str(model), "--data", str(data), "--adapter-path", str(run_dir),
            "--iters", str(steps), "--batch-size", str(batch_size), "--learning-rate", "1e-4",
            "--sample-count", "0", "--save-every", "0", "--eval-every", "0"]  # fmt: skip
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlx_dpo.cli", *args], env=env,
                          capture_output=True, text=True, cwd=WORK)  # fmt: skip
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        sys.exit(f"training failed:\n{done.stderr[-3000:]}")
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    elapsed = [e["elapsed"] for e in events if e.get("event") == "step"]
    later = [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)]
    per_step = sum(later) / len(later)
    return {"steps": len(elapsed), "per_step": per_step, "steps_total": per_step * len(elapsed),
            "first_step": elapsed[0], "wall": wall, "run_dir": str(run_dir)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(default_model()))
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--before", help="the Python of a checkout with the old eval")
    args = parser.parse_args()
    if not Path(args.model).exists():
        sys.exit(f"{args.model} is missing: run `scripts/setup.sh test`")
    args.model = str(Path(args.model).resolve())
    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = FACTS.read_text().splitlines()[: args.pairs]
    for name in ("train.jsonl", "test.jsonl"):
        (data / name).write_text("\n".join(rows) + "\n")
    common = [args.model, str(data), str(args.batch_size)]
    loads = [f"start {load_average()}"]

    training = train_steps(Path(args.model), data, len(rows), args.batch_size)
    adapter = training["run_dir"]
    loads.append(f"after training {load_average()}")
    passes = in_process(sys.executable, "--forward", *common, adapter)
    forward_share = passes["forward"] / passes["forward_backward"]
    loads.append(f"after forward/backward {load_average()}")

    measured: list[tuple[str, dict]] = []
    for label, given in (("no adapter", "-"), ("adapter", adapter)):
        if args.before:
            cache = WORK / f"cache-before-{len(measured)}"
            found = in_process(args.before, "--eval", *common, given, cache=cache)
            measured.append((f"before, {label}", found))
        cache = WORK / f"cache-after-{len(measured)}"
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        for state in ("cold", "warm"):
            found = in_process(sys.executable, "--eval", *common, given, cache=cache)
            measured.append((f"after, {label}, {state} cache", found))
        loads.append(f"after {label} {load_average()}")

    forward_half = training["steps_total"] * forward_share
    print(f"{args.pairs} pairs, batch size {args.batch_size}, {args.model}")
    print(f"training: {training['steps']} steps, {training['per_step']:.2f} s a step "
          f"(first step {training['first_step']:.1f} s since start incl. loading), "
          f"{training['steps_total']:.1f} s of steps; wall {training['wall']:.1f} s")  # fmt: skip
    print(f"policy forward over the training batches {passes['forward']:.1f} s, forward + "
          f"backward {passes['forward_backward']:.1f} s: forward share {forward_share:.2f}, "
          f"forward half of the steps {forward_half:.1f} s")  # fmt: skip
    print(f"{'':36s} {'eval s':>7s} {'load s':>7s} {'eval / fwd half':>16s}  pref acc")
    for name, found in measured:
        accuracy = found["result"].get("logps/preference_accuracy")
        shown = "-" if accuracy is None else f"{accuracy:.3f}"
        print(f"{name:36s} {found['eval']:7.1f} {found['load']:7.1f} "
              f"{found['eval'] / forward_half:16.2f}  {shown}")  # fmt: skip
    print("load average:", "; ".join(loads), f"; end {load_average()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--eval":
        model, data, batch_size, given = sys.argv[2:6]
        found = one_eval(model, None if given == "-" else given, data, int(batch_size))
        print(json.dumps(found, default=float))
    elif len(sys.argv) > 1 and sys.argv[1] == "--forward":
        model, data, batch_size, adapter = sys.argv[2:6]
        print(json.dumps(forward_and_backward(model, adapter, data, int(batch_size))))
    else:
        main()
