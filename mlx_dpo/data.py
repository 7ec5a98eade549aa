"""Preference data: read, validate, tokenize (docs/architecture.md, "Tokenization").

Every record is checked before anything trains; all problems are reported together with
the file, line and field. Tokenization follows the chat template exactly: the response is
what the template adds after the generation prompt, end-of-turn tokens included.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlx_dpo.errors import UserError

SPLITS = ("train", "valid", "test")
ROLES = ("system", "user", "assistant", "tool")
# Pairs gathered at a time by TokenizedSplit.subset and tokenized at a time by tokenize_records.
SUBSET_CHUNK = 4096
TOKENIZE_CHUNK = 2048

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
    """One pair's token ids: numpy views into its split's buffer, or plain lists (tests, tools
    that build pairs by hand). `index` is the pair's position in its split."""

    index: int
    source: str
    prompt_ids: Any
    chosen_ids: Any
    rejected_ids: Any
    prompt_cut: int = 0  # tokens cut from the left of the prompt
    response_cut: int = 0  # tokens cut from the right of the longer response
    prefix_mismatch: bool = False  # the template's prompt was not a prefix of the full text


class TokenizedSplit:
    """A tokenized split held as numpy arrays, not Python lists of ints: one flat int32 buffer
    with each pair's prompt, chosen and rejected ids one after the other, `starts` (where each
    pair begins) and `lengths` (n, 3). The bytes are about 4 per token, so 60,000 pairs of
    ~650 tokens take ~160 MB where lists of Python ints took ~1.5 GB.

    `pairs` is a sequence view that yields TokenizedPair objects (numpy slices) for code that
    works pair by pair (collate, tests); bulk users read the arrays."""

    def __init__(
        self,
        name: str,
        path: str,
        tokens: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        sources: list[str],
        cuts: np.ndarray | None = None,
        mismatch: np.ndarray | None = None,
        shape: str = "",
    ):
        n = len(starts)
        self.name = name
        self.path = path
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int32).reshape(n, 3)
        self.sources = list(sources)
        self.cuts = np.zeros((n, 2), np.int32) if cuts is None else np.asarray(cuts, np.int32)
        self.mismatch = np.zeros(n, bool) if mismatch is None else np.asarray(mismatch, bool)
        self.shape = shape  # the data shape the records were read as (mlx_dpo.shapes)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def pairs(self) -> PairsView:
        return PairsView(self)

    def pair(self, i: int) -> TokenizedPair:
        start = int(self.starts[i])
        p, c, r = (int(x) for x in self.lengths[i])
        t = self.tokens
        return TokenizedPair(
            i,
            self.sources[i],
            t[start : start + p],
            t[start + p : start + p + c],
            t[start + p + c : start + p + c + r],
            int(self.cuts[i, 0]),
            int(self.cuts[i, 1]),
            bool(self.mismatch[i]),
        )

    def pair_lengths(self) -> np.ndarray:
        """prompt + the longer response, per pair (what a row of the pair needs)."""
        return self.lengths[:, 0] + np.maximum(self.lengths[:, 1], self.lengths[:, 2])

    @property
    def truncation(self) -> dict[str, int]:
        cut = self.cuts > 0
        return {
            "pairs": int(cut.any(axis=1).sum()),
            "prompt": int(cut[:, 0].sum()),
            "response": int(cut[:, 1].sum()),
            "prefix_mismatch": int(self.mismatch.sum()),
        }

    @property
    def nbytes(self) -> int:
        arrays = (self.tokens, self.starts, self.lengths, self.cuts, self.mismatch)
        return sum(a.nbytes for a in arrays)

    def fingerprint(self) -> str:
        """Hash of every token id: changes with the data, the template and max_length."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.lengths).tobytes())
        for i in range(0, len(self), 4096):
            # Pairs are hashed in order, so a subset or a reordering changes the fingerprint.
            for start, total in zip(
                self.starts[i : i + 4096], self.lengths[i : i + 4096].sum(axis=1), strict=True
            ):
                digest.update(self.tokens[start : start + total].tobytes())
        return digest.hexdigest()

    def subset(self, positions: np.ndarray | list[int], name: str | None = None) -> TokenizedSplit:
        """The pairs at these positions, in this order, as a new split with its own buffer."""
        positions = np.asarray(positions, dtype=np.int64)
        lengths = self.lengths[positions]
        totals = lengths.sum(axis=1).astype(np.int64)
        starts = np.zeros(len(positions), np.int64)
        if len(positions):
            starts[1:] = np.cumsum(totals)[:-1]
        tokens = np.empty(int(totals.sum()), dtype=np.int32)
        # Gathered in chunks of pairs: one vectorised index per chunk, with a bounded index array.
        for i in range(0, len(positions), SUBSET_CHUNK):
            chunk = slice(i, i + SUBSET_CHUNK)
            count = totals[chunk]
            if not count.sum():
                continue
            offsets = np.repeat(self.starts[positions[chunk]] - starts[chunk], count)
            first = int(starts[i])
            index = np.arange(first, first + int(count.sum()), dtype=np.int64)
            tokens[index] = self.tokens[index + offsets]
        return TokenizedSplit(
            name or self.name,
            self.path,
            tokens,
            starts,
            lengths,
            [self.sources[i] for i in positions],
            self.cuts[positions],
            self.mismatch[positions],
            self.shape,
        )

    @classmethod
    def concat(cls, name: str, path: str, splits: list[TokenizedSplit]) -> TokenizedSplit:
        tokens, starts, offset = [], [], 0
        for split in splits:
            tokens.append(split.tokens)
            starts.append(split.starts + offset)
            offset += len(split.tokens)
        shapes = sorted({s.shape for s in splits if s.shape})
        return cls(
            name,
            path,
            np.concatenate(tokens) if tokens else np.zeros(0, np.int32),
            np.concatenate(starts) if starts else np.zeros(0, np.int64),
            np.concatenate([s.lengths for s in splits]) if splits else np.zeros((0, 3)),
            [source for s in splits for source in s.sources],
            np.concatenate([s.cuts for s in splits]) if splits else None,
            np.concatenate([s.mismatch for s in splits]) if splits else None,
            "+".join(shapes),
        )

    @classmethod
    def from_pairs(
        cls, name: str, path: str, pairs: list[TokenizedPair], shape: str = ""
    ) -> TokenizedSplit:
        """A split from pairs built by hand (tests, benchmarks, calibration)."""
        builder = SplitBuilder()
        for pair in pairs:
            builder.add(
                pair.source,
                pair.prompt_ids,
                pair.chosen_ids,
                pair.rejected_ids,
                pair.prompt_cut,
                pair.response_cut,
                pair.prefix_mismatch,
            )
        return builder.build(name, path, shape)


class PairsView(Sequence):
    """The pairs of a TokenizedSplit, one TokenizedPair (numpy slices) at a time."""

    def __init__(self, split: TokenizedSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.split.pair(j) for j in range(*i.indices(len(self.split)))]
        if i < 0:
            i += len(self.split)
        if not 0 <= i < len(self.split):
            raise IndexError(i)
        return self.split.pair(int(i))

    def lengths(self) -> np.ndarray:
        """(n, 3) prompt, chosen and rejected lengths without building pair objects."""
        return self.split.lengths


class SplitBuilder:
    """Collects pairs chunk by chunk into numpy arrays (never one Python int per token)."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._lengths: list[tuple[int, int, int]] = []
        self._sources: list[str] = []
        self._cuts: list[tuple[int, int]] = []
        self._mismatch: list[bool] = []

    def add(self, source, prompt, chosen, rejected, prompt_cut=0, response_cut=0, mismatch=False):
        parts = [np.asarray(x, dtype=np.int32) for x in (prompt, chosen, rejected)]
        self._chunks.extend(parts)
        self._lengths.append(tuple(len(x) for x in parts))
        self._sources.append(source)
        self._cuts.append((prompt_cut, response_cut))
        self._mismatch.append(bool(mismatch))

    def __len__(self) -> int:
        return len(self._sources)

    def build(self, name: str, path: str, shape: str = "") -> TokenizedSplit:
        lengths = np.array(self._lengths, dtype=np.int32).reshape(-1, 3)
        totals = lengths.sum(axis=1).astype(np.int64)
        starts = np.zeros(len(lengths), np.int64)
        if len(lengths):
            starts[1:] = np.cumsum(totals)[:-1]
        tokens = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int32)
        return TokenizedSplit(
            name,
            path,
            tokens,
            starts,
            lengths,
            self._sources,
            np.array(self._cuts, dtype=np.int32).reshape(-1, 2),
            np.array(self._mismatch, dtype=bool),
            shape,
        )


# ---------------------------------------------------------------------------------------------
# Locating the files


def split_files(data: str | Path) -> dict[str, Path]:
    """A folder with train/valid/test .jsonl (or .json) files, or a single file (= train).
    (Other layouts, parquet and Hugging Face ids: mlx_dpo.sources.)"""
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


def decode_lines(raw: bytes, label: str) -> tuple[list[tuple[int, str]], list[str]]:
    """(line number, text) of every UTF-8 line (a leading byte-order mark dropped), and a
    problem naming `label`:line for each line that is not UTF-8."""
    problems = []
    lines = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{label}:{number}: not valid UTF-8 (byte {err.start} of the line)")
            continue
        if number == 1:
            text = text.lstrip("\ufeff")
        lines.append((number, text))
    return lines, problems


def read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed when it is .gz (the Hub's jsonl.gz shards)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise UserError(f"{path}: not a gzip file ({err})") from None
    return raw


def read_raw_records(
    path: Path, label: str | None = None
) -> tuple[list[tuple[str, Any]], list[str]]:
    """(source, value) of every record of a .jsonl/.json file (optionally .gz), and the
    problems of lines that are not JSON. `label` names the file in sources (default: path)."""
    path = Path(path)
    label = label or str(path)
    lines, problems = decode_lines(read_bytes(path), label)
    records = []
    if path.name.removesuffix(".gz").endswith(".json"):
        text = "\n".join(t for _, t in lines)
        if problems:
            return [], problems
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            return [], [f"{label}:{err.lineno}: not valid JSON ({err.msg})"]
        except ValueError:  # a number past Python's limit on digits
            return [], [f"{label}: {_TOO_LONG}"]
        except RecursionError:
            return [], [f"{label}: not valid JSON (nested too deeply)"]
        if not isinstance(values, list):
            return [], [f"{label}: a .json data file must hold a list of records"]
        return [(f"{label}[{i}]", v) for i, v in enumerate(values)], []
    for number, text in lines:
        if not text.strip():
            continue
        try:
            records.append((f"{label}:{number}", json.loads(text)))
        except json.JSONDecodeError as err:
            problems.append(f"{label}:{number}: not valid JSON ({err.msg}, column {err.colno})")
        except RecursionError:
            problems.append(f"{label}:{number}: not valid JSON (nested too deeply)")
        except ValueError:  # a number past Python's limit on digits (4300)
            problems.append(f"{label}:{number}: {_TOO_LONG}")
    return records, problems


# json.loads refuses integers longer than sys.get_int_max_str_digits() with a ValueError.
_TOO_LONG = "a number too long to read (thousands of digits)"


def text_problem(text: str) -> str | None:
    """Why a tokenizer cannot take `text`: a lone surrogate (JSON's "\\ud800" escapes
    decode to one; no UTF-8 encoding holds it), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (
            f"text the tokenizer cannot take: a lone surrogate {text[err.start]!r} at "
            f"character {err.start}"
        )
    return None


def parse_messages(
    value: Any, name: str, role: str | None
) -> tuple[list[Message] | None, str | None]:
    """A string or a list of {role, content} messages -> a message list, or a problem."""
    if isinstance(value, str):
        if not value.strip():
            return None, f"field '{name}': empty"
        if problem := text_problem(value):
            return None, f"field '{name}': {problem}"
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
        if problem := text_problem(content):
            return None, f"{where}: {problem}"
        messages.append({"role": message_role, "content": content})
    return messages, None


def validate_record(
    source: str, value: Any, fields: dict[str, str]
) -> tuple[PreferenceRecord | None, list[str]]:
    names = {name: fields.get(name, name) for name in ("prompt", "chosen", "rejected", "system")}
    if not isinstance(value, dict):
        return None, [f"{source}: a record must be a JSON object, got {type(value).__name__}"]
    parsed, problems = parse_message_fields(
        source, value, names, (("prompt", None), ("chosen", "assistant"), ("rejected", "assistant"))
    )
    system = value.get(names["system"])
    if system is not None and not isinstance(system, str):
        problems.append(f"{source}: field '{names['system']}': must be a string")
    elif system is not None and (problem := text_problem(system)):
        problems.append(f"{source}: field '{names['system']}': {problem}")
    if problems:
        return None, problems
    if parsed["chosen"] == parsed["rejected"]:
        return None, [f"{source}: fields '{names['chosen']}' and '{names['rejected']}': identical"]
    prompt = with_system(parsed["prompt"], system)
    return PreferenceRecord(source, prompt, parsed["chosen"], parsed["rejected"]), []


def parse_message_fields(
    source: str, value: dict, names: dict[str, str], roles: tuple[tuple[str, str | None], ...]
) -> tuple[dict[str, list[Message]], list[str]]:
    """The message fields of a record ((key, role) pairs: the role responses must have, None
    for a prompt), parsed by their names in the data; a problem for each missing or bad one."""
    problems = []
    parsed: dict[str, list[Message]] = {}
    for key, role in roles:
        name = names[key]
        if name not in value:
            problems.append(f"{source}: field '{name}': missing")
            continue
        messages, problem = parse_messages(value[name], name, role)
        if problem:
            problems.append(f"{source}: {problem}")
        else:
            parsed[key] = messages
    return parsed, problems


def with_system(prompt: list[Message], system: str | None) -> list[Message]:
    """The prompt after the record's `system` text, unless it is blank or the prompt already
    starts with a system message."""
    if system and system.strip() and prompt[0]["role"] != "system":
        return [{"role": "system", "content": system}, *prompt]
    return prompt


def validate_pair(
    source: str, value: Any, fields: dict[str, str]
) -> tuple[list[PreferenceRecord], list[str]]:
    """validate_record's answer as a list (no record or one): the form validated_records takes."""
    record, problems = validate_record(source, value, fields)
    return ([] if record is None else [record]), problems


def validated_records(
    label: str,
    rows: list[tuple[str, Any]],
    problems: list[str],
    validate: Callable[[str, Any, dict[str, str]], tuple[list[Any], list[str]]],
    fields: dict[str, str],
) -> list[Any]:
    """The records of a file's (source, value) rows, each validated by `validate`. Raises
    UserError listing every problem (`problems`: those found while reading, first) under
    `label`, or saying the file holds no records."""
    problems = list(problems)
    records = []
    for source, value in rows:
        found, record_problems = validate(source, value, fields)
        problems += record_problems
        records += found
    if not rows and not problems:
        problems.append(f"{label}: empty (no records)")
    if problems:
        raise UserError(f"{label}: {len(problems)} problem(s) in the data", problems)
    return records


def read_records(path: str | Path, fields: dict[str, str] | None = None) -> list[PreferenceRecord]:
    """Read and validate one data file. Raises UserError listing every problem."""
    path = Path(path)
    raw, problems = read_raw_records(path)
    return validated_records(str(path), raw, problems, validate_pair, fields or {})


def read_files(
    data: str | Path,
    files: dict[str, Path],
    read: Callable[[Path, dict[str, str] | None], list[Any]],
    fields: dict[str, str] | None,
) -> dict[str, list[Any]]:
    """Every split's file read by `read` (read_records, unpaired.read_unpaired_records). The
    problems of all files are reported together, under `data`."""
    records: dict[str, list[Any]] = {}
    problems: list[str] = []
    for split, path in files.items():
        try:
            records[split] = read(path, fields)
        except UserError as err:
            problems += err.problems or [str(err)]
    if problems:
        raise UserError(f"{data}: {len(problems)} problem(s) in the data", problems)
    return records


# ---------------------------------------------------------------------------------------------
# Tokenizing


def as_token_ids(value: Any) -> list[int]:
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value["input_ids"]
    return [int(i) for i in value]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _common_prefix(a: Any, b: Any) -> int:
    m = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:m]) != np.asarray(b[:m]))
    return int(differ[0]) if len(differ) else m


def _same(a: Any, b: Any) -> bool:
    return len(a) == len(b) and bool(np.array_equal(a, b))


def plain_text(messages: list[Message]) -> str:
    return "\n\n".join(m["content"] for m in messages)


class TemplateRefused(Exception):
    """The chat template raised for a conversation, even with the system text folded in."""


def fold_system(messages: list[Message]) -> list[Message] | None:
    """The conversation with its system text folded into the first user turn (what templates
    that have no system role, like Gemma's and Mistral's, do with it themselves), or None when
    there is no system message to fold."""
    if not messages or messages[0]["role"] != "system":
        return None
    system, rest = messages[0]["content"], messages[1:]
    for i, message in enumerate(rest):
        if message["role"] == "user":
            merged = {"role": "user", "content": f"{system}\n\n{message['content']}"}
            return [*rest[:i], merged, *rest[i + 1 :]]
    return [{"role": "user", "content": system}, *rest]


def render_record(record: PreferenceRecord, tokenizer: Any) -> tuple[str, str, str, bool]:
    """(prompt text with the generation prompt, prompt + chosen, prompt + rejected, folded):
    the chat template's texts. A template that refuses the system role (or demands strict
    user/assistant alternation and sees a system turn) gets the system text folded into the
    first user turn; one that refuses anyway raises TemplateRefused with its own message."""
    prompt = record.prompt
    for attempt in range(2):
        try:
            return (
                tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                tokenizer.apply_chat_template(prompt + record.chosen, tokenize=False),
                tokenizer.apply_chat_template(prompt + record.rejected, tokenize=False),
                attempt == 1,
            )
        except Exception as err:  # jinja2's TemplateError, or anything a template raises
            folded = fold_system(prompt) if attempt == 0 else None
            if folded is None:
                raise TemplateRefused(str(err) or type(err).__name__) from None
            prompt = folded
    raise AssertionError("unreachable")


def _template_ids(tokenizer: Any, messages: list[Message], generation_prompt: bool) -> list[int]:
    return as_token_ids(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True
        )
    )


def tokenize_record(
    record: PreferenceRecord, tokenizer: Any
) -> tuple[list[int], list[int], list[int], bool]:
    """(prompt_ids, chosen_ids, rejected_ids, prefix_mismatch) before truncation, one record
    through the tokenizer's own apply_chat_template. The reference the batched path
    (tokenize_records) is checked against; raises TemplateRefused as render_record does."""
    return _tokenize_one(record, tokenizer)[:4]


def _tokenize_one(record: PreferenceRecord, tokenizer: Any) -> tuple[Any, Any, Any, bool, bool]:
    """tokenize_record, and whether the system text was folded into the first user turn."""
    if has_chat_template(tokenizer):
        prompt = record.prompt
        for attempt in range(2):
            try:
                prompt_ids = _template_ids(tokenizer, prompt, True)
                full_chosen = _template_ids(tokenizer, prompt + record.chosen, False)
                full_rejected = _template_ids(tokenizer, prompt + record.rejected, False)
                break
            except Exception as err:
                folded = fold_system(prompt) if attempt == 0 else None
                if folded is None:
                    raise TemplateRefused(str(err) or type(err).__name__) from None
                prompt = folded
        return (*_split_at_prompt(prompt_ids, full_chosen, full_rejected), attempt == 1)
    prompt_ids = as_token_ids(tokenizer.encode(plain_text(record.prompt)))
    eos = tokenizer.eos_token_id
    responses = []
    for messages in (record.chosen, record.rejected):
        ids = as_token_ids(tokenizer.encode(plain_text(messages), add_special_tokens=False))
        responses.append(ids + ([eos] if eos is not None else []))
    return prompt_ids, responses[0], responses[1], False, False


def _split_at_prompt(prompt_ids, full_chosen, full_rejected):
    shared = min(_common_prefix(prompt_ids, full_chosen), _common_prefix(prompt_ids, full_rejected))
    mismatch = shared < len(prompt_ids)
    if mismatch:
        # Split at the longest prefix all three share, and report it.
        prompt_ids = prompt_ids[:shared]
    return prompt_ids, full_chosen[shared:], full_rejected[shared:], mismatch


def truncate(
    prompt: Any, chosen: Any, rejected: Any, max_length: int
) -> tuple[Any, Any, Any, int, int]:
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


def fast_backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind a Hugging Face fast tokenizer (or mlx-lm's wrapper
    of one), or None."""
    for candidate in (tokenizer, getattr(tokenizer, "_tokenizer", None)):
        backend = getattr(candidate, "backend_tokenizer", None)
        if backend is not None:
            return backend
    return None


@dataclass
class BatchEncoder:
    """The fast tokenizer's batch encode, and where a text may be cut without changing its
    tokens (`segment_end`: the end of the last added token, e.g. <|im_start|>, in a text)."""

    encode: Callable[[list[str]], list[list[int]]]
    segment_end: Callable[[str], int] | None = None


def batch_encoder(tokenizer: Any) -> BatchEncoder | None:
    """The fast tokenizer's batch encode (Rust, the texts of a chunk in one call, on every
    core), or None when the tokenizer has no fast backend.

    A fast tokenizer splits its input at added tokens first and encodes the pieces between
    them independently, so text up to the end of an added token encodes the same alone as
    followed by anything. The prompt up to its last added token is then encoded once and
    shared by the prompt and both full conversations, instead of three times. That holds for
    normalizers that work piece by piece (Unicode forms, lower case) and added tokens that
    strip no neighbouring spaces; otherwise `segment_end` is None and every text is encoded
    whole. tokenize_records checks the result against apply_chat_template either way."""
    backend = fast_backend(tokenizer)
    encode_batch = getattr(backend, "encode_batch_fast", None) or getattr(
        backend, "encode_batch", None
    )
    if encode_batch is None:
        return None

    def encode(texts: list[str]) -> list[list[int]]:
        # Parallel inside this call only: the setting (false by default in the CLI, which
        # keeps forked processes quiet) is back as it was before anything else runs.
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        try:
            return [e.ids for e in encode_batch(texts, add_special_tokens=False)]
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous

    return BatchEncoder(encode, _segment_end(backend))


PIECEWISE_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Replace")


def _piecewise(normalizer: dict | None) -> bool:
    if normalizer is None:
        return True
    if normalizer.get("type") == "Sequence":
        return all(_piecewise(n) for n in normalizer.get("normalizers", []))
    return normalizer.get("type") in PIECEWISE_NORMALIZERS


def _segment_end(backend: Any) -> Callable[[str], int] | None:
    try:
        added = list(backend.get_added_tokens_decoder().values())
        config = json.loads(backend.to_str())
    except Exception:
        return None
    # Unicode normalisation and the like work within each piece between added tokens; a
    # prefix space added to the first piece only (Metaspace) or any other normalizer might not.
    contextual = not _piecewise(config.get("normalizer")) or "Metaspace" in json.dumps(
        config.get("pre_tokenizer")
    )
    if contextual or not added or any(t.lstrip or t.rstrip or t.single_word for t in added):
        return None
    contents = sorted({t.content for t in added if t.content}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(c) for c in contents))

    def segment_end(text: str) -> int:
        end = 0
        for match in pattern.finditer(text):
            end = match.end()
        return end

    return segment_end


def tokenize_batch(
    records: list[PreferenceRecord], tokenizer: Any, encode: BatchEncoder | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, bool] | None], list[str], int]:
    """Token ids (prompt, chosen, rejected, prefix_mismatch) of a chunk of records before
    truncation, or None for a record the template refused; the problems; how many records
    had their system text folded. With a chat template the texts are rendered and then
    encoded together by the fast tokenizer (`encode`, from batch_encoder); without one, or
    without a fast tokenizer, record by record as tokenize_record does."""
    results: list = []
    problems: list[str] = []
    folded = 0
    if encode is None or not has_chat_template(tokenizer):
        for record in records:
            try:
                prompt, chosen, rejected, mismatch, was_folded = _tokenize_one(record, tokenizer)
            except TemplateRefused as err:
                problems.append(
                    f"{record.source}: the chat template refuses this conversation ({err})"
                )
                results.append(None)
                continue
            results.append((_ids(prompt), _ids(chosen), _ids(rejected), mismatch))
            folded += was_folded
        return results, problems, folded
    texts: list[str] = []
    kept: list[int] = []
    for i, record in enumerate(records):
        try:
            prompt, chosen, rejected, was_folded = render_record(record, tokenizer)
        except TemplateRefused as err:
            problems.append(f"{record.source}: the chat template refuses this conversation ({err})")
            continue
        folded += was_folded
        cut = encode.segment_end(prompt) if encode.segment_end else 0
        head = prompt[:cut]
        if not (chosen.startswith(head) and rejected.startswith(head)):
            head, cut = "", 0
        texts += [head, prompt[cut:], chosen[cut:], rejected[cut:]]
        kept.append(i)
    ids = encode.encode(texts)
    results = [None] * len(records)
    for k, i in enumerate(kept):
        head, prompt, chosen, rejected = ids[4 * k : 4 * k + 4]
        results[i] = _split_at_prompt(
            _ids(head + prompt), _ids(head + chosen), _ids(head + rejected)
        )
    return results, problems, folded


def _ids(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def tokenize_records(
    records: list[PreferenceRecord],
    tokenizer: Any,
    max_length: int,
    name: str,
    path: str,
    shape: str = "",
    notes: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TokenizedSplit:
    """Tokenize, check and truncate records into a TokenizedSplit, in chunks, batched through
    the fast tokenizer. The first records are also tokenized one by one through
    apply_chat_template (tokenize_record); if the two ever differ, the whole split takes the
    record-by-record path. Folded system texts are said in `notes`. `progress(done, total)`
    hears the records tokenized: at the start, after each chunk, and at the end."""
    if progress is not None:
        progress(0, len(records))
    encode = batch_encoder(tokenizer) if has_chat_template(tokenizer) else None
    if encode is not None and records:
        encode = _checked_encoder(records[:8], tokenizer, encode)
    builder = SplitBuilder()
    problems: list[str] = []
    folded = 0
    for start in range(0, len(records), TOKENIZE_CHUNK):
        chunk = records[start : start + TOKENIZE_CHUNK]
        results, chunk_problems, chunk_folded = tokenize_batch(chunk, tokenizer, encode)
        problems += chunk_problems
        folded += chunk_folded
        for record, result in zip(chunk, results, strict=True):
            if result is None:
                continue
            problem = _add_pair(builder, record.source, *result, max_length)
            if problem:
                problems.append(problem)
        if progress is not None:
            progress(start + len(chunk), len(records))
    refused = [p for p in problems if "the chat template refuses" in p]
    if len(records) > 1 and len(refused) == len(records):
        # Every pair refused: the template is at fault, not the data; one line says so.
        raise UserError(
            f"{refused[0]}; it refuses all {len(records)} pairs of {path}: the model's chat "
            "template does not take this data"
        )
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s) after tokenizing", problems)
    if folded and notes is not None:
        notes.append(
            f"{name}: the chat template has no system role; the system text of {folded} "
            "pair(s) was folded into the first user turn"
        )
    return builder.build(name, path, shape)


def _checked_encoder(records, tokenizer, encode):
    """The batch encoder when it gives exactly what apply_chat_template gives on these
    records, else None (the record-by-record path)."""
    try:
        batched, _, _ = tokenize_batch(records, tokenizer, encode)
    except Exception:
        return None
    for record, result in zip(records, batched, strict=True):
        try:
            reference = tokenize_record(record, tokenizer)
        except TemplateRefused:
            if result is not None:
                return None
            continue
        if result is None or any(
            not _same(a, b) for a, b in zip(result[:3], reference[:3], strict=True)
        ):
            return None
    return encode


def _add_pair(builder, source, prompt, chosen, rejected, mismatch, max_length) -> str | None:
    if not len(prompt):
        return f"{source}: the prompt tokenizes to nothing"
    if not len(chosen) or not len(rejected) or _same(chosen, rejected):
        return f"{source}: chosen and rejected tokenize to the same tokens"
    prompt, chosen, rejected, prompt_cut, response_cut = truncate(
        prompt, chosen, rejected, max_length
    )
    if _same(chosen, rejected):
        return (
            f"{source}: chosen and rejected are identical after cutting to max_length {max_length}"
        )
    builder.add(source, prompt, chosen, rejected, prompt_cut, response_cut, mismatch)
    return None


def load_splits(
    data: str | Path,
    tokenizer: Any,
    max_length: int,
    fields: dict[str, str] | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, TokenizedSplit]:
    """Read, validate and tokenize every split of a local .jsonl/.json folder or file.
    Problems of all files are reported together. (Every other form of --data, with shapes,
    selection and the on-disk cache: mlx_dpo.sources.load_data.)"""
    files = {split: path for split, path in split_files(data).items() if split in splits}
    records = read_files(data, files, read_records, fields)
    return {
        split: tokenize_records(recs, tokenizer, max_length, split, str(files[split]))
        for split, recs in records.items()
    }
