"""Whether a person is at a terminal: what the dashboard and the collect app need."""

from __future__ import annotations

import os
import sys


def terminal_attached() -> bool:
    """All three standard streams are a terminal and TERM is not dumb."""
    streams = (sys.stdin, sys.stdout, sys.stderr)
    return all(s is not None and s.isatty() for s in streams) and os.environ.get("TERM") != "dumb"
