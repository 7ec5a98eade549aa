"""Append-only JSON-lines files that a crash cannot corrupt, and the verdict files built on them.

`JsonLines`: each record is one line, written with one `write` call on an O_APPEND descriptor
and fsynced before `append` returns, so a verdict is either on disk whole or (killed during
the write) a torn last line without its newline. Opening the file again finds such a tail,
keeps a copy of its bytes in `<file>.torn` and cuts it off: at most the line being written is
lost. A last line without a newline that is complete JSON (a file written by hand) is kept.
Complete lines that are not JSON are a user error naming file:line; nothing is rewritten then.
One process writes a file at a time (an advisory lock says so to a second one).

`VerdictFiles`: what `mlx-dpo collect` and `mlx-dpo pairs` write.
    OUT.jsonl          the pairs: standard records (prompt, chosen, rejected) that
                       `mlx-dpo train --data OUT.jsonl` trains on as they are, each with a
                       `meta` object (how it was made: see tui/collect and mlx_dpo/pairs.py)
    OUT.skipped.jsonl  verdicts that made no pair (tie, both bad, inconsistent judge, ...)
Every verdict is one line in exactly one of the two, carrying meta.item (what was judged: a
prompt's key, or a comparison of two candidates) and meta.seq (its order across both files).
Opening them again gives the items already judged, so a run continues where it stopped.
Undo cuts the latest verdict (the last line of its file) off with a truncate at that line's
start, fsynced: the other lines are never rewritten. Lines of other origin (no meta.seq) are
kept and never undone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_dpo.errors import UserError

SKIPPED_SUFFIX = ".skipped.jsonl"


@dataclass
class Line:
    number: int  # 1-based line number in the file
    offset: int  # byte offset of the line's start
    value: Any


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonLines:
    """One append-only JSON-lines file (see the module docstring). `open()` reads and repairs
    it; `lines` holds its parsed lines; `torn_bytes` says how much a torn tail held."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lines: list[Line] = []
        self.torn_bytes = 0
        self._fd: int | None = None
        self._size = 0
        self._needs_newline = False

    def open(self) -> JsonLines:
        existed = self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.path}: another process is writing this file") from None
        self._fd = fd
        try:
            self._read()
        except BaseException:
            self.close()
            raise
        if not existed:
            _fsync_directory(self.path.parent)
        return self

    def _read(self) -> None:
        with open(self.path, "rb") as handle:
            data = handle.read()
        end = data.rfind(b"\n") + 1
        body, tail = data[:end], data[end:]
        problems = []
        offset = 0
        for number, raw in enumerate(body.split(b"\n")[:-1], start=1):
            value, problem = _parse(raw)
            if problem:
                problems.append(f"{self.path}:{number}: {problem}")
            elif value is not None:
                self.lines.append(Line(number, offset, value))
            offset += len(raw) + 1
        if tail:
            value, problem = _parse(tail)
            if problem is None and value is not None:
                # Complete JSON without its newline (a hand-written file): kept as it is.
                self.lines.append(Line(body.count(b"\n") + 1, offset, value))
                self._needs_newline = True
            elif problem is not None and not problems:
                self._cut_torn_tail(offset, tail)
        if problems:
            raise UserError(f"{self.path}: {len(problems)} line(s) are not JSON", problems)
        self._size = os.fstat(self._fd).st_size

    def _cut_torn_tail(self, offset: int, tail: bytes) -> None:
        """A write cut short by a kill: keep its bytes aside, then drop them from the file."""
        with open(self.path.with_name(self.path.name + ".torn"), "ab") as aside:
            aside.write(tail + b"\n")
            aside.flush()
            os.fsync(aside.fileno())
        os.ftruncate(self._fd, offset)
        os.fsync(self._fd)
        self.torn_bytes = len(tail)

    def append(self, value: Any) -> Line:
        """Write one line and fsync it; returns where it went."""
        assert self._fd is not None, "open() first"
        line = json.dumps(value, ensure_ascii=False) + "\n"
        data = ("\n" if self._needs_newline else "") + line
        encoded = data.encode("utf-8")
        offset = self._size + (1 if self._needs_newline else 0)
        number = (self.lines[-1].number + 1) if self.lines else 1
        view = memoryview(encoded)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._size += len(encoded)
        self._needs_newline = False
        entry = Line(number, offset, value)
        self.lines.append(entry)
        return entry

    def remove_last(self) -> Line:
        """Cut the last line off the file (truncate at its start, fsynced)."""
        assert self._fd is not None, "open() first"
        last = self.lines.pop()
        os.ftruncate(self._fd, last.offset)
        os.fsync(self._fd)
        self._size = last.offset
        return last

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonLines:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(raw: bytes) -> tuple[Any, str | None]:
    """(value, None) for a JSON line, (None, None) for a blank one, (None, problem) else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 (byte {err.start} of the line)"
    if not text.strip():
        return None, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg}, column {err.colno})"
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"


def skipped_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + SKIPPED_SUFFIX)


def sidecar_path(out: str | Path, name: str) -> Path:
    """OUT.jsonl -> OUT.<name>.jsonl (another file beside the pairs)."""
    out = Path(out)
    return out.with_name(f"{out.name.removesuffix('.jsonl')}.{name}.jsonl")


def check_out_path(out: str | Path) -> Path:
    """--out must be a .jsonl file (what `train --data` reads as one record a line)."""
    path = Path(out).expanduser()
    if path.suffix != ".jsonl":
        raise UserError(f"--out {out}: must be a .jsonl file")
    if path.is_dir():
        raise UserError(f"--out {out}: is a folder")
    return path


def meta_of(value: Any) -> dict | None:
    """The meta object of a verdict written by this tool, or None for any other line."""
    if isinstance(value, dict):
        meta = value.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("seq"), int) and "item" in meta:
            return meta
    return None


class VerdictFiles:
    """The pairs file and its skipped file (see the module docstring)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.pairs = JsonLines(self.out)
        self.skipped = JsonLines(skipped_path(self.out))

    def open(self) -> VerdictFiles:
        self.pairs.open()
        try:
            self.skipped.open()
        except BaseException:
            self.pairs.close()
            raise
        return self

    def close(self) -> None:
        self.pairs.close()
        self.skipped.close()

    def __enter__(self) -> VerdictFiles:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def torn_bytes(self) -> int:
        return self.pairs.torn_bytes + self.skipped.torn_bytes

    def verdicts(self) -> list[dict]:
        """Every verdict of this tool in both files, in the order they were given."""
        records = [
            line.value
            for file in (self.pairs, self.skipped)
            for line in file.lines
            if meta_of(line.value)
        ]
        return sorted(records, key=lambda r: r["meta"]["seq"])

    def done_items(self) -> set[str]:
        return {r["meta"]["item"] for r in self.verdicts()}

    def _next_seq(self) -> int:
        seqs = [
            meta["seq"]
            for file in (self.pairs, self.skipped)
            for line in file.lines
            if (meta := meta_of(line.value))
        ]
        return max(seqs, default=0) + 1

    def add(self, record: dict, is_pair: bool) -> dict:
        """Append a verdict (record with a meta object holding `item`) to the pairs file
        (is_pair) or to the skipped file; meta.seq is set here."""
        record["meta"]["seq"] = self._next_seq()
        (self.pairs if is_pair else self.skipped).append(record)
        return record

    def undo(self) -> dict | None:
        """Remove the latest verdict and return it; None when there is none. Refuses (user
        error) when a line of other origin was appended after it."""
        latest = None
        for file in (self.pairs, self.skipped):
            for line in file.lines:
                meta = meta_of(line.value)
                if meta and (latest is None or meta["seq"] > latest[2]):
                    latest = (file, line, meta["seq"])
        if latest is None:
            return None
        file, line, _ = latest
        if file.lines[-1] is not line:
            raise UserError(
                f"{file.path}: the last line is not a verdict of this tool; undo only "
                "removes its own latest verdict"
            )
        return file.remove_last().value
