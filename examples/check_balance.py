"""Check a preference data folder for the biases a DPO run can learn by accident.

    python examples/check_balance.py [DATA_DIR]      (default: examples/data)

For every split (train/valid/test .jsonl) it prints the number of pairs, the record formats, and
how long chosen and rejected answers are, in characters and in words:
  - mean chosen length / mean rejected length (1.00 = balanced),
  - the share of pairs whose chosen answer is longer (and the share of ties).
A preference set where the chosen answer is nearly always the longer one teaches length, not
quality. It also checks the rules the demo data keeps: every line is a JSON object with the
right fields, plain ASCII, chosen != rejected, no prompt repeated within a split, and no
valid/test prompt that is also a train prompt.

It needs nothing but the standard library, so it runs before anything is installed. With
--strict it exits 1 when a split is outside the demo's limits (mean ratio within 5%, chosen
longer in 40-60% of the pairs). `mlx-dpo data audit` does the general version of this, with
the model's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

SPLITS = ("train", "valid", "test")
MAX_RATIO_DEVIATION = 0.05
LONGER_SHARE = (0.40, 0.60)


def _text(value, where: str) -> str:
    """The answer text of a chosen/rejected value: a string or a list of assistant messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for m in value:
            if m.get("role") != "assistant" or not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: expected assistant messages with string content")
        return "\n".join(m["content"] for m in value)
    raise ValueError(f"{where}: expected a string or a list of assistant messages")


def _prompt_key(rec: dict, where: str) -> tuple[str, str]:
    """(format name, normalised prompt text) of a record."""
    prompt = rec["prompt"]
    if isinstance(prompt, str):
        fmt = "standard+system" if "system" in rec else "standard"
        if "system" in rec and not isinstance(rec["system"], str):
            raise ValueError(f"{where}: 'system' must be a string")
        text = prompt
    elif isinstance(prompt, list) and prompt:
        for m in prompt:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"{where}: prompt messages need a role")
            if not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: prompt message content must be a string")
        if prompt[-1]["role"] != "user":
            raise ValueError(f"{where}: the last prompt message must be from the user")
        users = sum(m["role"] == "user" for m in prompt)
        fmt = "conversational" + (" multi-turn" if users > 1 else "")
        if isinstance(rec["chosen"], str):
            fmt += " (string answers)"
        text = "\n".join(m["content"] for m in prompt)
    else:
        raise ValueError(f"{where}: 'prompt' must be a string or a list of messages")
    norm = " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())
    return fmt, norm


def load(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if not line.isascii():
            raise ValueError(f"{where}: not plain ASCII")
        rec = json.loads(line)
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: not a JSON object")
        extra = set(rec) - {"prompt", "chosen", "rejected", "system"}
        missing = {"prompt", "chosen", "rejected"} - set(rec)
        if extra or missing:
            raise ValueError(f"{where}: missing {sorted(missing)} / unknown {sorted(extra)}")
        fmt, key = _prompt_key(rec, where)
        chosen = _text(rec["chosen"], f"{where} 'chosen'")
        rejected = _text(rec["rejected"], f"{where} 'rejected'")
        if type(rec["chosen"]) is not type(rec["rejected"]):
            raise ValueError(f"{where}: chosen and rejected must have the same form")
        if chosen.strip() == rejected.strip():
            raise ValueError(f"{where}: chosen == rejected")
        rows.append(
            {"where": where, "format": fmt, "key": key, "chosen": chosen, "rejected": rejected}
        )
    return rows


def stats(rows: list[dict], measure) -> dict:
    c = [measure(r["chosen"]) for r in rows]
    r = [measure(r["rejected"]) for r in rows]
    n = len(rows)
    return {
        "chosen_mean": sum(c) / n,
        "rejected_mean": sum(r) / n,
        "ratio": (sum(c) / n) / (sum(r) / n),
        "longer": sum(a > b for a, b in zip(c, r, strict=True)) / n,
        "ties": sum(a == b for a, b in zip(c, r, strict=True)) / n,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(Path(__file__).parent / "data"))
    ap.add_argument("--strict", action="store_true", help="exit 1 if a split is out of balance")
    args = ap.parse_args(argv)
    data = Path(args.data)
    problems: list[str] = []
    train_keys: set[str] = set()
    for split in SPLITS:
        path = data / f"{split}.jsonl"
        if not path.exists():
            continue
        rows = load(path)
        keys = Counter(r["key"] for r in rows)
        for key, count in keys.items():
            if count > 1:
                problems.append(f"{split}: prompt repeated {count} times: {key!r}")
        if split == "train":
            train_keys = set(keys)
        else:
            for key in set(keys) & train_keys:
                problems.append(f"{split}: prompt also in train: {key!r}")
        formats = Counter(r["format"] for r in rows)
        print(
            f"{split}: {len(rows)} pairs; "
            + ", ".join(f"{v} {k}" for k, v in sorted(formats.items()))
        )
        words = [len(r["chosen"].split()) for r in rows]
        print(f"  chosen answers: {sum(w < 25 for w in words)}/{len(rows)} under 25 words")
        for unit, measure in (("chars", len), ("words", lambda s: len(s.split()))):
            s = stats(rows, measure)
            print(
                f"  {unit:5s}: mean chosen {s['chosen_mean']:.1f}, rejected {s['rejected_mean']:.1f}"
                f" (ratio {s['ratio']:.3f}); chosen longer in {s['longer']:.0%}, ties {s['ties']:.0%}"
            )
            if abs(s["ratio"] - 1) > MAX_RATIO_DEVIATION:
                problems.append(
                    f"{split} {unit}: mean ratio {s['ratio']:.3f} is off by more than 5%"
                )
            if not LONGER_SHARE[0] <= s["longer"] <= LONGER_SHARE[1]:
                problems.append(
                    f"{split} {unit}: chosen longer in {s['longer']:.0%}, outside 40-60%"
                )
    for p in problems:
        print("PROBLEM:", p)
    if not problems:
        print("OK: balanced, no duplicates, no train prompts in valid/test")
    return 1 if problems and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
