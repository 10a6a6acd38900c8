"""Child processes that never outlive the demo.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the demo, which
then stops the children itself, newest first: SIGTERM, a wait, SIGKILL after the timeout. On
Linux each child also gets SIGKILL from the kernel should the demo die without cleaning up
(``PR_SET_PDEATHSIG``; a Mosquitto started as root drops to its own user, which clears it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DemoError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Starts children with their output in log files, and stops every one of them."""

    def __init__(self, log_dir: Path, *, stop_timeout_s: float = 15.0) -> None:
        self._log_dir = log_dir
        self._stop_timeout_s = stop_timeout_s
        self._children: list[Child] = []

    def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log = self._log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the demo starts children from one thread
            )
        child = Child(name=name, process=process, log=log)
        self._children.append(child)
        return child

    def run(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout_s: float | None = None,
    ) -> Child:
        """Start a child and wait for it (see :meth:`wait`)."""
        child = self.start(name, args, env=env, cwd=cwd)
        self.wait(child, timeout_s=timeout_s)
        return child

    def wait(self, child: Child, *, timeout_s: float | None = None) -> None:
        """Wait for a child to end; a non-zero exit or the timeout raises ``ChildError``."""
        try:
            code = child.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(child)
            raise ChildError(child, f"{child.name} took longer than {timeout_s:.0f} s") from None
        if child in self._children:
            self._children.remove(child)
        if code != 0:
            raise ChildError(child, f"{child.name} exited with {code}")

    def stop(self, child: Child) -> int:
        """SIGTERM, wait up to the stop timeout, then SIGKILL; returns the exit status."""
        process = child.process
        try:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self._stop_timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            raise
        finally:
            if child in self._children:
                self._children.remove(child)
        return process.returncode

    def stop_all(self) -> list[str]:
        """Stop every child, newest first; names those that had to be killed."""
        killed: list[str] = []
        try:
            while self._children:
                child = self._children[-1]
                if self.stop(child) == -signal.SIGKILL:
                    killed.append(child.name)
        except KeyboardInterrupt:
            for child in self._children:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                child.process.wait()
                killed.append(child.name)
            self._children.clear()
        return killed

    @property
    def children(self) -> list[Child]:
        return list(self._children)


class ChildError(DemoError):
    """A child process failed or took too long; ``child.tail()`` has the end of its log."""

    def __init__(self, child: Child, message: str) -> None:
        super().__init__(message)
        self.child = child


def executable(name: str) -> str:
    """A console script of this project, beside the running interpreter."""
    path = Path(sys.executable).with_name(name)
    if not os.access(path, os.X_OK):
        raise DemoError(f"{path} is missing: install the project first (`make demo` does it)")
    return str(path)
