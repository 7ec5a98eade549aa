"""The generation worker as a child process: start it, send it requests, read its lines.
Plain Python; the protocol is mlx_dpo/collect_worker.py's."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from collections.abc import Iterator
from typing import IO, Any


class WorkerProcess:
    """`command` starts the worker (python -m mlx_dpo.collect_worker ...). Its stderr goes to
    a temporary file: the last lines say why it died, if it does."""

    def __init__(self, command: list[str]):
        self.command = command
        self.process: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None

    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (held while the worker runs)
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, request: dict[str, Any]) -> bool:
        """Write one request; False when the worker is gone."""
        if not self.alive or self.process.stdin is None:
            return False
        try:
            self.process.stdin.write(json.dumps(request, ensure_ascii=False) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def lines(self) -> Iterator[dict[str, Any]]:
        """The worker's protocol lines until its output ends (call from one thread)."""
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict):
                yield line

    def wait(self, timeout: float = 5.0) -> int | None:
        assert self.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=timeout)
        return None

    def stderr_tail(self, lines: int = 8) -> list[str]:
        if self._stderr is None:
            return []
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", errors="replace")
            return [line for line in text.strip().splitlines() if line.strip()][-lines:]
        return []

    def stop(self) -> None:
        """Ask the worker to quit, then make sure it is gone."""
        if self.process is None:
            return
        self.send({"op": "quit"})
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin:
                self.process.stdin.close()
        if self.wait(timeout=3.0) is None:
            self.process.kill()
            self.wait(timeout=3.0)
        if self._stderr is not None:
            with contextlib.suppress(OSError):
                self._stderr.close()
