"""A virtual environment with KServe's Python package, for running its clients against the hub.

``kserve`` pins protobuf < 7 and pulls pandas and the Kubernetes client, so it cannot share the
project's environment; it gets its own under ``.cache/kserve-venv``, made once (a few minutes,
about 450 MB) and reused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "kserve-venv"
REQUIREMENT = "kserve==0.21.0"


def kserve_python() -> Path:
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if marker.exists() and marker.read_text().strip() == REQUIREMENT:
        return python
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", REQUIREMENT], check=True, timeout=1200
    )
    marker.write_text(REQUIREMENT + "\n")
    return python
