"""The generation worker of `mlx-dpo collect`: MLX in its own process, JSON lines on stdin/stdout.

    python -m mlx_dpo.collect_worker --model M [--adapter-path RUN] [--temp T] [--top-p P]
                                     [--max-tokens N] [--trust-remote-code]

The collect screen (tui/collect) never imports MLX; it starts this process and talks to it
with one JSON object a line. Requests are served one at a time, in order; "cancel" is read
while a request runs.

Worker -> screen
    {"type": "ready", "model", "adapter", "mode": "samples"|"adapter", "labels": {"a", "b"},
     "sampling": {"temp", "top_p", "max_tokens"}}                 once, after loading
    {"type": "token", "id", "side": "a"|"b", "text"}             a piece of an answer
    {"type": "answer", "id", "side", "text", "tokens", "finish_reason": "stop"|"length",
     "seed"}                                                       an answer is complete
    {"type": "preference", "id", "logp_a", "logp_b", "margin", "prefers", "basis", ...}
                                                                   mlx_dpo.scoring.model_preference
    {"type": "done", "id"}                                         the request is complete
    {"type": "cancelled", "id"}                                    it was cancelled
    {"type": "error", "id" (or null), "message", "fatal"}         fatal: the worker exits

Screen -> worker
    {"op": "generate", "id", "prompt": [messages], "seeds": {"a", "b"}, "score": bool}
        A then B, streamed (never interleaved: each answer is seeded on its own, so it is the
        same whenever drawn again); with score, their preference before "done". Regenerating
        is this request again with the next draw's seeds (mlx_dpo.prompts.pair_seeds).
    {"op": "score", "id", "prompt": [messages], "a": text, "b": text}
        the model's log-prob preference for any two answers: "preference", then "done"
    {"op": "cancel", "id"}   stop that request after the current token ("cancelled")
    {"op": "quit"}           exit (so does the end of stdin)

mode "samples" (no adapter): A and B are two samples of the model with independent seeds.
mode "adapter": A is the reference (the base, or base + the run's init adapter: the adapter
switched off as in training) and B the adapter's policy, drawn with the same seed.

Anything a library prints goes to stderr: stdout carries the protocol only. A mistake in the
arguments or the model folder is an error message with fatal true, then exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import threading
from typing import Any, TextIO

from mlx_dpo.errors import UserError, resource_failure
from mlx_dpo.generation import load_generator, stream_answer
from mlx_dpo.logprobs import find_head_split
from mlx_dpo.model import reference_mode
from mlx_dpo.sampling import DEFAULT_MAX_TOKENS, DEFAULT_TEMP, DEFAULT_TOP_P, check_sampling
from mlx_dpo.scoring import model_preference

EXIT_USER_ERROR = 2


class Channel:
    """The protocol's output: whole lines, flushed, safe from the reader thread too."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields}, ensure_ascii=False) + "\n"
        with self.lock:
            self.stream.write(line)
            self.stream.flush()


def protocol_stdout() -> TextIO:
    """The real stdout for the protocol; file descriptor 1 is pointed at stderr so that a
    stray print from a library cannot break a line of the protocol."""
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stream


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlx_dpo.collect_worker")
    parser.add_argument("--model")
    parser.add_argument("--adapter-path")
    parser.add_argument("--temp", type=float, default=DEFAULT_TEMP)
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser.parse_args(argv)


class Worker:
    """The loaded model and the requests it serves."""

    def __init__(self, args: argparse.Namespace, channel: Channel):
        self.channel = channel
        self.sampling = check_sampling(args.temp, args.top_p, args.max_tokens)
        generator = load_generator(args.model, args.adapter_path, args.trust_remote_code)
        self.model, self.tokenizer = generator.model, generator.tokenizer
        self.frozen_adapter = generator.frozen_adapter
        if args.adapter_path:
            self.mode = "adapter"
            self.labels = {
                "a": f"reference ({generator.reference_name})",
                "b": "policy (adapter)",
            }
        else:
            self.mode = "samples"
            self.labels = {"a": "sample A", "b": "sample B"}
        self.split = find_head_split(self.model)
        self.cancelled: set[Any] = set()
        self.ready = {
            "model": args.model,
            "adapter": args.adapter_path,
            "mode": self.mode,
            "labels": self.labels,
            "sampling": self.sampling.as_dict(),
        }

    def generate(self, request_id: Any, prompt: list[dict], seeds: dict, score: bool) -> None:
        answers = {}
        for side in ("a", "b"):
            reference = self.mode == "adapter" and side == "a"
            with (
                reference_mode(self.model, self.frozen_adapter)
                if reference
                else contextlib.nullcontext()
            ):
                for piece, answer in stream_answer(
                    self.model, self.tokenizer, prompt, self.sampling, int(seeds[side])
                ):
                    if request_id in self.cancelled:
                        self.channel.send("cancelled", id=request_id)
                        return
                    if answer is None:
                        self.channel.send("token", id=request_id, side=side, text=piece)
                    else:
                        answers[side] = answer.text
                        self.channel.send(
                            "answer",
                            id=request_id,
                            side=side,
                            text=answer.text,
                            tokens=answer.tokens,
                            finish_reason=answer.finish_reason,
                            seed=int(seeds[side]),
                        )
        if score:
            self.score(request_id, prompt, answers["a"], answers["b"])
        self.channel.send("done", id=request_id)

    def score(self, request_id: Any, prompt: list[dict], a: str, b: str) -> None:
        preference = model_preference(
            self.model, self.tokenizer, prompt, a, b, self.split, self.frozen_adapter
        )
        self.channel.send("preference", id=request_id, **preference)

    def serve(self, request: dict) -> None:
        op, request_id = request.get("op"), request.get("id")
        if request_id in self.cancelled:
            self.channel.send("cancelled", id=request_id)
            return
        if op == "generate":
            self.generate(
                request_id, request["prompt"], request["seeds"], bool(request.get("score"))
            )
        elif op == "score":
            self.score(request_id, request["prompt"], request["a"], request["b"])
            self.channel.send("done", id=request_id)
        else:
            self.channel.send("error", id=request_id, message=f"unknown op {op!r}", fatal=False)


def read_requests(stream: TextIO, requests: queue.Queue, worker_cancelled: set) -> None:
    """The reader thread: requests into the queue, cancels applied at once, None at the end."""
    for line in stream:
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(request, dict):
            continue
        if request.get("op") == "cancel":
            worker_cancelled.add(request.get("id"))
            continue
        requests.put(request)
        if request.get("op") == "quit":
            return
    requests.put(None)


def main(argv: list[str] | None = None) -> int:
    channel = Channel(protocol_stdout())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = parse_args(argv)
        worker = Worker(args, channel)
    except UserError as err:
        channel.send("error", id=None, message=str(err), fatal=True)
        return EXIT_USER_ERROR
    except SystemExit as exit_:  # argparse
        channel.send("error", id=None, message="bad worker arguments", fatal=True)
        return int(exit_.code or EXIT_USER_ERROR)
    channel.send("ready", **worker.ready)
    requests: queue.Queue = queue.Queue()
    threading.Thread(
        target=read_requests, args=(sys.stdin, requests, worker.cancelled), daemon=True
    ).start()
    while True:
        request = requests.get()
        if request is None or request.get("op") == "quit":
            return 0
        try:
            worker.serve(request)
        except BrokenPipeError:
            return 0
        except Exception as err:  # one request failing is reported; the worker goes on
            message = resource_failure(err) or f"{type(err).__name__}: {err}"
            channel.send("error", id=request.get("id"), message=message, fatal=False)


if __name__ == "__main__":
    sys.exit(main())
