"""Importing the package, its schema or the hub's backend module loads no qiskit or
scikit-learn: the hub pays for them only when it loads a quantum model."""

from __future__ import annotations

import subprocess
import sys


def test_light_imports() -> None:
    code = (
        "import sys, quantum, quantum.schema, quantum.errors, cloud_hub.backends.quantum\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'qiskit', 'qiskit_machine_learning', 'qiskit_aer', 'sklearn'})\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
