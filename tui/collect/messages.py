"""What the generation worker says, as messages the collect screen handles (posted from the
thread that reads the worker's output). The protocol: mlx_dpo/collect_worker.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class WorkerReady(Message):
    """The model is loaded: model, adapter, mode, labels {a, b}, sampling."""

    info: dict[str, Any]


@dataclass
class AnswerPiece(Message):
    request_id: int
    side: str
    text: str


@dataclass
class AnswerFinished(Message):
    request_id: int
    side: str
    text: str
    tokens: int
    finish_reason: str


@dataclass
class PreferenceFound(Message):
    """The model's own preference between the two answers (mlx_dpo/scoring.py)."""

    request_id: int
    preference: dict[str, Any]


@dataclass
class RequestDone(Message):
    request_id: int


@dataclass
class WorkerFailed(Message):
    """An error the worker reported (fatal: it exits after it)."""

    request_id: int | None
    message: str
    fatal: bool


@dataclass
class WorkerExited(Message):
    """The worker's output ended: it exited (or was killed)."""

    returncode: int | None
    stderr_tail: list[str]


PREFERENCE_KEYS = ("logp_a", "logp_b", "reference_logp_a", "reference_logp_b", "basis")


def message_for(line: dict[str, Any]) -> Message | None:
    """The message for one protocol line from the worker (None for a line it doesn't know)."""
    kind, request_id = line.get("type"), line.get("id")
    if kind == "ready":
        return WorkerReady({k: v for k, v in line.items() if k != "type"})
    if kind == "token":
        return AnswerPiece(request_id, line["side"], line["text"])
    if kind == "answer":
        return AnswerFinished(
            request_id, line["side"], line["text"], line["tokens"], line["finish_reason"]
        )
    if kind == "preference":
        return PreferenceFound(
            request_id, {k: v for k, v in line.items() if k not in ("type", "id")}
        )
    if kind == "done":
        return RequestDone(request_id)
    if kind == "error":
        return WorkerFailed(request_id, str(line.get("message")), bool(line.get("fatal")))
    return None
