"""A stand-in generation worker for the collect screen's tests: no MLX, the same protocol
(mlx_dpo/collect_worker.py), answers made from the seeds so every test knows them.

    python fake_collect_worker.py [--mode samples|adapter] [--die-after N] [--fail-load]

Answer of side s with seed n: "answer s n" (and "" when n is divisible by 97, for the
empty-answer refusal). It prefers A when the seed of A is even, else B. --die-after N: exit
hard after streaming the first token of the N-th generate request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def fake_answer(side: str, seed: int) -> str:
    return "" if seed % 97 == 0 else f"answer {side} {seed}"


def send(kind: str, **fields) -> None:
    sys.stdout.write(json.dumps({"type": kind, **fields}) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="samples")
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--fail-load", action="store_true")
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    if args.fail_load:
        send("error", id=None, message="/no/such/model: no such model folder", fatal=True)
        return 2
    labels = (
        {"a": "reference (base)", "b": "policy (adapter)"}
        if args.mode == "adapter"
        else {"a": "sample A", "b": "sample B"}
    )
    send(
        "ready",
        model="fake-model",
        adapter=None,
        mode=args.mode,
        labels=labels,
        sampling={"temp": 0.8, "top_p": 0.95, "max_tokens": 16},
    )
    generated = 0
    for line in sys.stdin:
        request = json.loads(line)
        op, request_id = request.get("op"), request.get("id")
        if op == "quit":
            return 0
        if op == "cancel":
            continue
        if op == "generate":
            generated += 1
            answers = {}
            for side in ("a", "b"):
                seed = request["seeds"][side]
                text = fake_answer(side, seed)
                for number, word in enumerate(text.split(" ")):
                    send("token", id=request_id, side=side, text=(" " if number else "") + word)
                    if args.die_after and generated >= args.die_after:
                        os._exit(9)
                    time.sleep(args.token_delay)
                answers[side] = text
                send(
                    "answer",
                    id=request_id,
                    side=side,
                    text=text,
                    tokens=len(text.split()),
                    finish_reason="stop",
                    seed=seed,
                )
            prefers = "a" if request["seeds"]["a"] % 2 == 0 else "b"
            send(
                "preference",
                id=request_id,
                logp_a=-1.0,
                logp_b=-2.0,
                margin=1.0 if prefers == "a" else -1.0,
                prefers=prefers,
                basis="logp",
            )
            send("done", id=request_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
