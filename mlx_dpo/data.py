"""Preference data: read, validate, tokenize (DESIGN.md "Data and tokenization").

Every record is checked before anything trains; all problems are reported together with
the file, line and field. Tokenization follows the chat template exactly: the response is
what the template adds after the generation prompt, end-of-turn tokens included.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_dpo.errors import UserError

SPLITS = ("train", "valid", "test")
ROLES = ("system", "user", "assistant", "tool")

Message = dict[str, str]


@dataclass(frozen=True)
class PreferenceRecord:
    """One validated record, normalised to message lists."""

    source: str  # "file:line"
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


@dataclass
class TokenizedPair:
    index: int
    source: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_cut: int = 0  # tokens cut from the left of the prompt
    response_cut: int = 0  # tokens cut from the right of the longer response
    prefix_mismatch: bool = False  # the template's prompt was not a prefix of the full text


@dataclass
class TokenizedSplit:
    name: str
    path: str
    pairs: list[TokenizedPair]
    truncation: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def fingerprint(self) -> str:
        """Hash of every token id: changes with the data, the template and max_length."""
        digest = hashlib.sha256()
        for pair in self.pairs:
            for ids in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids):
                digest.update(len(ids).to_bytes(4, "little"))
                digest.update(b"".join(i.to_bytes(4, "little") for i in ids))
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Locating the files


def split_files(data: str | Path) -> dict[str, Path]:
    """A folder with train/valid/test .jsonl (or .json) files, or a single file (= train)."""
    path = Path(data).expanduser()
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        raise UserError(f"{path}: no such data file or folder")
    files = {}
    for split in SPLITS:
        for suffix in (".jsonl", ".json"):
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                files[split] = candidate
                break
    if "train" not in files and not files:
        raise UserError(
            f"{path}: no train.jsonl, valid.jsonl or test.jsonl in this folder",
        )
    return files


# ---------------------------------------------------------------------------------------------
# Reading and validating


def _decode_lines(path: Path) -> tuple[list[tuple[int, str]], list[str]]:
    problems = []
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    lines = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{path}:{number}: not valid UTF-8 (byte {err.start} of the line)")
            continue
        if number == 1:
            text = text.lstrip("\ufeff")
        lines.append((number, text))
    return lines, problems


def read_raw_records(path: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    lines, problems = _decode_lines(path)
    records = []
    if path.suffix == ".json":
        text = "\n".join(t for _, t in lines)
        if problems:
            return [], problems
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            return [], [f"{path}:{err.lineno}: not valid JSON ({err.msg})"]
        if not isinstance(values, list):
            return [], [f"{path}: a .json data file must hold a list of records"]
        return [(f"{path}[{i}]", v) for i, v in enumerate(values)], []
    for number, text in lines:
        if not text.strip():
            continue
        try:
            records.append((f"{path}:{number}", json.loads(text)))
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg}, column {err.colno})")
        except RecursionError:
            problems.append(f"{path}:{number}: not valid JSON (nested too deeply)")
    return records, problems


def parse_messages(
    value: Any, name: str, role: str | None
) -> tuple[list[Message] | None, str | None]:
    """A string or a list of {role, content} messages -> a message list, or a problem."""
    if isinstance(value, str):
        if not value.strip():
            return None, f"field '{name}': empty"
        return [{"role": role or "user", "content": value}], None
    if not isinstance(value, list):
        kind = "null" if value is None else type(value).__name__
        return None, f"field '{name}': must be a string or a list of messages, got {kind}"
    if not value:
        return None, f"field '{name}': empty list"
    messages = []
    for position, message in enumerate(value):
        where = f"field '{name}'[{position}]"
        if not isinstance(message, dict):
            return None, f"{where}: a message must be an object with 'role' and 'content'"
        message_role, content = message.get("role"), message.get("content")
        if message_role not in ROLES:
            return None, f"{where}: 'role' must be one of {', '.join(ROLES)}, got {message_role!r}"
        if role is not None and message_role != role:
            return None, f"{where}: responses must be {role} messages, got {message_role!r}"
        if not isinstance(content, str):
            return None, f"{where}: 'content' must be a string"
        if role is not None and not content.strip():
            return None, f"{where}: empty"
        messages.append({"role": message_role, "content": content})
    return messages, None


def validate_record(
    source: str, value: Any, fields: dict[str, str]
) -> tuple[PreferenceRecord | None, list[str]]:
    names = {name: fields.get(name, name) for name in ("prompt", "chosen", "rejected", "system")}
    if not isinstance(value, dict):
        return None, [f"{source}: a record must be a JSON object, got {type(value).__name__}"]
    problems = []
    parsed: dict[str, list[Message]] = {}
    for key, role in (("prompt", None), ("chosen", "assistant"), ("rejected", "assistant")):
        name = names[key]
        if name not in value:
            problems.append(f"{source}: field '{name}': missing")
            continue
        messages, problem = parse_messages(value[name], name, role)
        if problem:
            problems.append(f"{source}: {problem}")
        else:
            parsed[key] = messages
    system = value.get(names["system"])
    if system is not None and not isinstance(system, str):
        problems.append(f"{source}: field '{names['system']}': must be a string")
    if problems:
        return None, problems
    if parsed["chosen"] == parsed["rejected"]:
        return None, [f"{source}: fields '{names['chosen']}' and '{names['rejected']}': identical"]
    prompt = parsed["prompt"]
    if system and system.strip() and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    return PreferenceRecord(source, prompt, parsed["chosen"], parsed["rejected"]), []


def read_records(path: str | Path, fields: dict[str, str] | None = None) -> list[PreferenceRecord]:
    """Read and validate one data file. Raises UserError listing every problem."""
    path = Path(path)
    raw, problems = read_raw_records(path)
    records = []
    for source, value in raw:
        record, record_problems = validate_record(source, value, fields or {})
        problems += record_problems
        if record is not None:
            records.append(record)
    if not raw and not problems:
        problems.append(f"{path}: empty (no records)")
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s) in the data", problems)
    return records


# ---------------------------------------------------------------------------------------------
# Tokenizing


def as_token_ids(value: Any) -> list[int]:
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value["input_ids"]
    return [int(i) for i in value]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def plain_text(messages: list[Message]) -> str:
    return "\n\n".join(m["content"] for m in messages)


def tokenize_record(
    record: PreferenceRecord, tokenizer: Any
) -> tuple[list[int], list[int], list[int], bool]:
    """(prompt_ids, chosen_ids, rejected_ids, prefix_mismatch) before truncation."""
    if has_chat_template(tokenizer):
        prompt_ids = as_token_ids(
            tokenizer.apply_chat_template(record.prompt, add_generation_prompt=True, tokenize=True)
        )
        full_chosen = as_token_ids(
            tokenizer.apply_chat_template(record.prompt + record.chosen, tokenize=True)
        )
        full_rejected = as_token_ids(
            tokenizer.apply_chat_template(record.prompt + record.rejected, tokenize=True)
        )
        shared = min(
            _common_prefix(prompt_ids, full_chosen), _common_prefix(prompt_ids, full_rejected)
        )
        mismatch = shared < len(prompt_ids)
        if mismatch:
            # Split at the longest prefix all three share, and report it.
            prompt_ids = prompt_ids[:shared]
        return prompt_ids, full_chosen[shared:], full_rejected[shared:], mismatch
    prompt_ids = as_token_ids(tokenizer.encode(plain_text(record.prompt)))
    eos = tokenizer.eos_token_id
    responses = []
    for messages in (record.chosen, record.rejected):
        ids = as_token_ids(tokenizer.encode(plain_text(messages), add_special_tokens=False))
        responses.append(ids + ([eos] if eos is not None else []))
    return prompt_ids, responses[0], responses[1], False


def truncate(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int
) -> tuple[list[int], list[int], list[int], int, int]:
    """Cut the prompt from the left first (keeping at least one token), then the responses
    from the right, so prompt + longer response fits max_length. Returns the cut counts."""
    longest = max(len(chosen), len(rejected))
    excess = len(prompt) + longest - max_length
    prompt_cut = response_cut = 0
    if excess > 0:
        prompt_cut = min(excess, max(len(prompt) - 1, 0))
        prompt = prompt[prompt_cut:]
        excess -= prompt_cut
    if excess > 0:
        keep = max_length - len(prompt)
        response_cut = longest - keep
        chosen, rejected = chosen[:keep], rejected[:keep]
    return prompt, chosen, rejected, prompt_cut, response_cut


def tokenize_records(
    records: list[PreferenceRecord], tokenizer: Any, max_length: int, name: str, path: str
) -> TokenizedSplit:
    pairs = []
    counts = {"pairs": 0, "prompt": 0, "response": 0, "prefix_mismatch": 0}
    problems = []
    for index, record in enumerate(records):
        prompt, chosen, rejected, mismatch = tokenize_record(record, tokenizer)
        if not prompt:
            problems.append(f"{record.source}: the prompt tokenizes to nothing")
            continue
        if not chosen or not rejected or chosen == rejected:
            problems.append(f"{record.source}: chosen and rejected tokenize to the same tokens")
            continue
        prompt, chosen, rejected, prompt_cut, response_cut = truncate(
            prompt, chosen, rejected, max_length
        )
        if chosen == rejected:
            problems.append(
                f"{record.source}: chosen and rejected are identical after cutting to "
                f"max_length {max_length}"
            )
            continue
        counts["pairs"] += bool(prompt_cut or response_cut)
        counts["prompt"] += bool(prompt_cut)
        counts["response"] += bool(response_cut)
        counts["prefix_mismatch"] += mismatch
        pairs.append(
            TokenizedPair(
                index, record.source, prompt, chosen, rejected, prompt_cut, response_cut, mismatch
            )
        )
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s) after tokenizing", problems)
    return TokenizedSplit(name, path, pairs, counts)


def load_splits(
    data: str | Path,
    tokenizer: Any,
    max_length: int,
    fields: dict[str, str] | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, TokenizedSplit]:
    """Read, validate and tokenize every split found. Problems of all files are reported
    together."""
    files = split_files(data)
    records: dict[str, list[PreferenceRecord]] = {}
    problems: list[str] = []
    for split, path in files.items():
        if split not in splits:
            continue
        try:
            records[split] = read_records(path, fields)
        except UserError as err:
            problems += err.problems or [str(err)]
    if problems:
        raise UserError(f"{data}: {len(problems)} problem(s) in the data", problems)
    return {
        split: tokenize_records(recs, tokenizer, max_length, split, str(files[split]))
        for split, recs in records.items()
    }
