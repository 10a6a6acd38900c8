"""Importing the agent imports no interpreter, TensorFlow or web framework: the runtime is chosen
(and imported) only when the agent starts."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "ai_edge_litert",
    "tflite_runtime",
    "tensorflow",
    "keras",
    "fastapi",
    "onnxruntime",
    "qiskit",
)


def test_importing_every_module_stays_light() -> None:
    code = (
        "import json, sys\n"
        "import edge_agent, edge_agent.agent, edge_agent.cli, edge_agent.client, edge_agent.probe\n"
        "import edge_agent.runtime.litert, edge_agent.runtime.tflite\n"
        "import edge_agent.runtime.tensorflow_lite\n"
        "import edge_agent.cloud.gateway, edge_agent.cloud.link, edge_agent.cloud.outbox\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
