"""Unit tests of mlx_dpo/cli/terminal.py: a person is at a terminal only when all three
standard streams are one and TERM is not dumb."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from mlx_dpo.cli import terminal
from mlx_dpo.cli.terminal import terminal_attached


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def streams(monkeypatch) -> SimpleNamespace:
    """The module's view of sys: three terminals (pytest's capture owns the real streams)."""
    fake = SimpleNamespace(stdin=Tty(), stdout=Tty(), stderr=Tty())
    monkeypatch.setattr(terminal, "sys", fake)
    monkeypatch.setenv("TERM", "xterm-256color")
    return fake


def test_all_three_streams_at_a_terminal(streams):
    assert terminal_attached()


@pytest.mark.parametrize("stream", ["stdin", "stdout", "stderr"])
def test_one_stream_redirected_or_closed_is_no_terminal(streams, stream):
    setattr(streams, stream, io.StringIO())
    assert not terminal_attached()
    setattr(streams, stream, None)  # pythonw, a daemon: no stream at all
    assert not terminal_attached()


def test_a_dumb_terminal_is_no_terminal(streams, monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert not terminal_attached()
