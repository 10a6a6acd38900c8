"""Progress on stderr for the command line: the current step, and how long it has run.

On a terminal the step's line is redrawn with its elapsed time; elsewhere (logs, CI) a step
prints one line when it starts and, when it runs long, a line every ``heartbeat_s``.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

__all__ = ["StderrProgress"]


class StderrProgress:
    def __init__(
        self, stream: TextIO | None = None, *, tick_s: float = 0.25, heartbeat_s: float = 15.0
    ) -> None:
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._tick_s = tick_s
        self._heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._step: str | None = None
        self._started = 0.0
        self._last_beat = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, message: str, fraction: float) -> None:
        with self._lock:
            self._finish_line()
            self._step = f"[{fraction:4.0%}] {message}"
            self._started = self._last_beat = time.monotonic()
            self._draw(start=True)
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._lock:
            self._finish_line()
            self._step = None

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self._started:.1f} s"

    def _draw(self, *, start: bool = False) -> None:
        if self._step is None:
            return
        if self._tty:
            self._stream.write(f"\r\033[K{self._step} ... {self._elapsed()}")
        elif start:
            self._stream.write(f"{self._step}\n")
        else:
            self._stream.write(f"       still at it: {self._elapsed()}\n")
        self._stream.flush()

    def _finish_line(self) -> None:
        if self._step is not None and self._tty:
            self._stream.write(f"\r\033[K{self._step} ({self._elapsed()})\n")
            self._stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self._tick_s):
            with self._lock:
                if self._tty:
                    self._draw()
                elif time.monotonic() - self._last_beat >= self._heartbeat_s:
                    self._last_beat = time.monotonic()
                    self._draw()
