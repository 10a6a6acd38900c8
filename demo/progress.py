"""One line per step: ``[3/9] converting the edge model ... 21.4 s``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self._total = total
        self._done = 0
        self._out = out or sys.stdout
        self._start = time.monotonic()
        self.note = ""
        """Set inside a step to say more on its line (``cached``, counts...)."""

    @contextmanager
    def step(self, title: str) -> Iterator[Progress]:
        self._done += 1
        self.note = ""
        self._write(f"[{self._done}/{self._total}] {title} ... ")
        start = time.monotonic()
        try:
            yield self
        except KeyboardInterrupt:
            self._write("interrupted\n")
            raise
        except BaseException:
            self._write("failed\n")
            raise
        note = f" ({self.note})" if self.note else ""
        self._write(f"{time.monotonic() - start:.1f} s{note}\n")

    def line(self, text: str) -> None:
        self._write(text + "\n")

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._start

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()
