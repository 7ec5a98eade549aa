"""Errors caused by the user's input: reported as a message, never as a traceback; and the
reading of a JSON file the user gave, which names the file (and line) when it is not one."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any


class UserError(Exception):
    """A mistake in a file, flag or folder the user gave us. `problems` lists every finding."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        text = one_line(self.args[0])
        problems = [one_line(p) for p in self.problems]
        if len(problems) == 1:
            # One mistake is one line: the problem alone when it names the message's file
            # itself ("a.yaml:3: ..." under "a.yaml: invalid configuration").
            problem, where = problems[0], text.split(": ")[0]
            if where != text and problem.startswith(where + ":"):
                return problem
            return f"{text.rstrip(':')}: {problem}"
        if problems:
            shown = problems[:30]
            text += "\n" + "\n".join(f"  {p}" for p in shown)
            if len(problems) > len(shown):
                text += f"\n  ... and {len(problems) - len(shown)} more"
        return text


# What str.splitlines breaks a line at, shown escaped: a name or value quoted from the user's
# files (a YAML key "\r") cannot split a message into lines.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (10, 11, 12, 13, 28, 29, 30, 0x85, 0x2028, 0x2029)}


def one_line(text: str) -> str:
    return str(text).translate(_LINE_BREAKS)


# Disk full, quota exceeded, file too large; and MLX's own message when a write comes up short.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_MEMORY_MARKERS = ("[metal::malloc]", "Insufficient Memory", "out of memory", "bad_alloc")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is the machine (or Metal) running out of memory."""
    text = str(err) or type(err).__name__
    return isinstance(err, MemoryError) or any(marker in text for marker in _MEMORY_MARKERS)


def resource_failure(err: BaseException) -> str | None:
    """What ran out, said for a person, when `err` is the machine running out of memory or
    disk rather than a bug; None otherwise."""
    text = str(err) or type(err).__name__
    if is_out_of_memory(err):
        return (
            f"out of memory ({text}); lower --batch-size or --max-length, add "
            "--grad-checkpoint, or see what fits with `mlx-dpo train --plan`"
        )
    short_write = isinstance(err, RuntimeError) and text.startswith("[write] Unable to write")
    if (isinstance(err, OSError) and err.errno in _DISK_ERRNOS) or short_write:
        where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
        return f"disk full{where} ({text}); free some space, then continue with --resume"
    return None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object, or a UserError naming the file (and line)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # Not UTF-8, a number past Python's limit on digits, or nested too deeply.
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise UserError(f"{path}: not valid JSON ({reason})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: must hold a JSON object, not {type(value).__name__}")
    return value
