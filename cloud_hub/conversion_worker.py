"""What runs in the conversion worker process (spawned; imports nothing heavy of the hub).

The worker dies with the hub (Linux ``PR_SET_PDEATHSIG``): a hub killed mid-job leaves no
orphan converting on, and the job's lease runs out for another replica to take it over. Each
job's log lines go to a file as well, which the hub copies into the shared store.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["init", "run"]

_PR_SET_PDEATHSIG = 1


def init(log_level: int, hub_pid: int | None = None) -> None:
    """Process initializer. ``hub_pid``: the hub that spawned this worker; if it died before
    the death signal was armed, the worker leaves at once instead of converting on."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if hub_pid is not None and os.getppid() != hub_pid:
        os._exit(1)
    from converters.jobs import init_worker

    init_worker(log_level)


def run(spec: Any, log_file: Path) -> dict[str, Any]:
    """:func:`converters.jobs.run_job` with its log lines also written to ``log_file``."""
    from converters.jobs import run_job

    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        return run_job(spec)
    finally:
        root.removeHandler(handler)
        handler.close()
