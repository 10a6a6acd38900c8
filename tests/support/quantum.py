"""A small quantum classifier for the tests, trained once per test process (CI's budget: iris,
4 qubits, a few COBYLA iterations; seconds, not minutes), and a hub repository serving it."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from quantum.schema import MODEL_FILE
from quantum.train import TrainConfig, TrainResult, train

SMALL = TrainConfig(
    dataset="iris",
    num_qubits=4,
    feature_map={"name": "z_feature_map", "reps": 2},
    ansatz={"name": "real_amplitudes", "reps": 2, "entanglement": "full"},
    max_iterations=30,
    seed=0,
)
"""About 5 s on an idle core. Enough to beat chance clearly, not to be good."""

MODEL_NAME = "iris_vqc"
MAX_BATCH_SIZE = 16


@functools.cache
def small_model() -> TrainResult:
    """The trained model, its file in a folder removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="quantum-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return train(TrainConfig(**{**SMALL.__dict__, "out_dir": folder}))


def quantum_repository(root: Path, model: Path, **config: Any) -> Path:
    """``<root>/iris_vqc/1/model.qml.json`` with a batching config.yaml (``config`` overrides)."""
    folder = root / MODEL_NAME
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / "1" / MODEL_FILE)
    settings = {
        "backend": "quantum",
        "max_batch_size": MAX_BATCH_SIZE,
        "dynamic_batching": {"max_queue_delay_us": 2000},
        **config,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    return root
