"""Prompts to answer: read from a file, each with a stable identity and the seeds derived from it.

PROMPTS (for `mlx-dpo collect` and `mlx-dpo pairs`) is one of
- a text file: one prompt a line (blank lines are skipped), each a user message;
- a `.jsonl` (or `.json` list) of records with `prompt`: a string or a list of messages, and
  an optional `system` string; any other field (`chosen`, `rejected`, ...) is ignored, so a
  preference data file works as it is;
- a data folder as `--data` takes it (train/valid/test .jsonl): the prompts of one split.

Every problem is reported at once with its file and line (exit 2 from the CLI). Plain Python:
the dashboard imports this too.

A prompt's key is a hash of its messages: the files of verdicts name the prompt by it, so a run
continues where it stopped even if the prompts file was reordered or grew. The sampling seeds
are derived from (base seed, key, draw), so an answer is the same whenever it is drawn again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# data.py's readers: the same line decoding, JSON-lines parsing and message validation as
# training data.
from mlx_dpo.data import (
    Message,
    decode_lines,
    parse_message_fields,
    read_raw_records,
    split_files,
    with_system,
)
from mlx_dpo.errors import UserError

JSON_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Prompt:
    source: str  # "file:line"
    messages: list[Message]
    key: str


def prompt_key(messages: list[Message]) -> str:
    """A short stable hash of the messages (role and content of each)."""
    canonical = json.dumps(
        [[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def make_prompt(source: str, messages: list[Message]) -> Prompt:
    return Prompt(source, messages, prompt_key(messages))


def prompt_field(messages: list[Message]) -> dict[str, Any]:
    """How a record writes its prompt: a plain string for one user message (with `system`
    beside it when there is one system message first), else the message list. data.py
    reads each form back to the same messages."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return {"prompt": messages[0]["content"]}
    if len(messages) == 2 and [m["role"] for m in messages] == ["system", "user"]:
        return {"system": messages[0]["content"], "prompt": messages[1]["content"]}
    return {"prompt": [dict(m) for m in messages]}


def prompt_from_record(record: dict[str, Any]) -> list[Message]:
    """The messages of a record written with `prompt_field` (no validation: our own files)."""
    value = record["prompt"]
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": record["system"]})
        return messages
    return [dict(m) for m in value]


# ---------------------------------------------------------------------------------------------
# Reading


def _text_prompts(path: Path) -> tuple[list[Prompt], list[str]]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    lines, problems = decode_lines(raw, str(path))
    prompts = []
    for number, text in lines:
        text = text.strip()
        if text:
            prompts.append(make_prompt(f"{path}:{number}", [{"role": "user", "content": text}]))
    return prompts, problems


def _record_prompts(path: Path, fields: dict[str, str]) -> tuple[list[Prompt], list[str]]:
    name, system_name = fields.get("prompt", "prompt"), fields.get("system", "system")
    raw, problems = read_raw_records(path)
    prompts = []
    for source, value in raw:
        if not isinstance(value, dict):
            problems.append(f"{source}: a record must be a JSON object, got {type(value).__name__}")
            continue
        parsed, field_problems = parse_message_fields(
            source, value, {"prompt": name}, (("prompt", None),)
        )
        if field_problems:
            problems += field_problems
            continue
        messages = parsed["prompt"]
        system = value.get(system_name)
        if system is not None and not isinstance(system, str):
            problems.append(f"{source}: field '{system_name}': must be a string")
            continue
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            problems.append(f"{source}: field '{name}': no user message with text")
            continue
        prompts.append(make_prompt(source, with_system(messages, system)))
    return prompts, problems


def load_prompts(
    path: str | Path, split: str | None = None, fields: dict[str, str] | None = None
) -> list[Prompt]:
    """The prompts of a text file, a JSON-lines/JSON file of records, or a data folder
    (`split`: default train, else the first split present). Raises UserError listing every
    problem with its file and line."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = split_files(path)
        chosen = split or next(s for s in ("train", "valid", "test") if s in files)
        if chosen not in files:
            raise UserError(f"{path}: no {chosen} split")
        path = files[chosen]
    elif split is not None:
        raise UserError(f"{path}: a split is chosen only in a data folder")
    elif not path.is_file():
        raise UserError(f"{path}: no such prompts file or data folder")
    if path.suffix in JSON_SUFFIXES:
        prompts, problems = _record_prompts(path, fields or {})
    else:
        prompts, problems = _text_prompts(path)
    if problems:
        problems.sort(key=lambda problem: _line_number(problem, path))
        raise UserError(f"{path}: {len(problems)} problem(s) in the prompts", problems)
    if not prompts:
        raise UserError(f"{path}: no prompts in this file")
    return prompts


def _line_number(problem: str, path: Path) -> int:
    """The line a problem names ("file:line: ..." or "file[index]: ..."), for file order."""
    match = re.match(r"[:\[](\d+)", problem[len(str(path)) :])
    return int(match.group(1)) if match else 0


def unique_prompts(prompts: list[Prompt]) -> tuple[list[Prompt], int]:
    """The prompts with repeats left out (first occurrence kept), and how many were left out."""
    seen: set[str] = set()
    unique = []
    for prompt in prompts:
        if prompt.key not in seen:
            seen.add(prompt.key)
            unique.append(prompt)
    return unique, len(prompts) - len(unique)


# ---------------------------------------------------------------------------------------------
# Seeds


def derive_seed(base_seed: int, *parts: object) -> int:
    """A seed in [0, 2**31) that depends only on the base seed and the parts."""
    text = ":".join(str(p) for p in (base_seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little") >> 1


def pair_seeds(base_seed: int, key: str, draw: int, same: bool) -> tuple[int, int]:
    """Seeds of answers A and B for a prompt's `draw`-th drawing (regenerating draws again).
    `same`: one seed for both sides (reference vs policy: they draw the same random stream,
    so only the adapter makes them differ); otherwise two independent seeds."""
    if same:
        seed = derive_seed(base_seed, key, draw)
        return seed, seed
    return derive_seed(base_seed, key, draw, "a"), derive_seed(base_seed, key, draw, "b")
