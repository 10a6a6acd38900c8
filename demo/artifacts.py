"""The demo's models: trained once, converted once, kept under ``.cache/demo/``.

    models/      edge.keras, cloud.keras, digits.npz, training.json  (``python -m demo.train``)
    artifacts/   edge/rpi4-litert-fp16/model.tflite, cloud/cloud-cpu-onnx/model.onnx, with their
                 manifest.json                                         (``model-convert build``)
    quantum/iris-vqc-<N>it/   model.qml.json, the iris VQC trained with N COBYLA iterations
                                                                       (``python -m quantum train``)

Each folder has a ``stamp.json``: the recipe it was made from and the sha256 of every file.
A folder whose stamp does not match (a changed training script, other sources, profiles or
settings, a file changed since) is made again; a new folder is built beside the old one and swapped in, so
an interrupted build never leaves a half-made cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from protocols import ArtifactManifest

from . import train
from .options import CLOUD_PROFILE, EDGE_PROFILE, ROOT
from .processes import Supervisor, executable

STAMP = "stamp.json"
TRAIN_TIMEOUT_S = 600.0
CONVERT_TIMEOUT_S = 600.0
QUANTUM_QUBITS = 4
QUANTUM_SEED = 0
QUANTUM_TEST_FRACTION = 0.3
QUANTUM_SOURCES = ("train.py", "circuits.py", "data.py", "preprocess.py", "schema.py", "cli.py")
"""The ``quantum`` modules whose change makes another model; a new version retrains it."""


@dataclass(frozen=True, kw_only=True)
class Artifact:
    path: Path
    manifest: ArtifactManifest


@dataclass(frozen=True, kw_only=True)
class DemoModels:
    edge: Artifact
    cloud: Artifact
    x_test: np.ndarray
    y_test: np.ndarray
    training: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STAMP
    }


def _stamped(folder: Path, recipe: str) -> bool:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(stamp, dict)
        and stamp.get("recipe") == recipe
        and bool(stamp.get("files"))
        and stamp.get("files") == _files(folder)
    )


def _swap_in(staging: Path, folder: Path, recipe: str) -> None:
    (staging / STAMP).write_text(
        json.dumps({"recipe": recipe, "files": _files(staging)}, indent=2) + "\n"
    )
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


@contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A fresh folder beside ``folder`` to build in; gone afterwards unless swapped in."""
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def training_recipe() -> str:
    """Changes whenever the training script does."""
    return hashlib.sha256(Path(train.__file__).read_bytes()).hexdigest()


def ensure_trained(cache: Path, supervisor: Supervisor) -> tuple[Path, bool]:
    """The folder of trained models, and whether it came from the cache."""
    folder = cache / "models"
    recipe = training_recipe()
    if _stamped(folder, recipe):
        return folder, True
    with _staging(folder) as staging:
        supervisor.run(
            "train",
            [sys.executable, "-m", "demo.train", str(staging)],
            cwd=ROOT,
            timeout_s=TRAIN_TIMEOUT_S,
        )
        _swap_in(staging, folder, recipe)
    return folder, False


def _conversion_recipe(models: Path) -> str:
    parts = {
        "edge": _sha256(models / "edge.keras"),
        "cloud": _sha256(models / "cloud.keras"),
        "digits": _sha256(models / "digits.npz"),
        "profiles": [EDGE_PROFILE, CLOUD_PROFILE],
        "converter": metadata.version("hybrid-inference"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def ensure_converted(cache: Path, models: Path, supervisor: Supervisor) -> tuple[Path, bool]:
    """Both artifacts, built with the real ``model-convert`` command (both at once, one per
    core), validated on the held-out digits; and whether they came from the cache."""
    folder = cache / "artifacts"
    recipe = _conversion_recipe(models)
    if _stamped(folder, recipe):
        return folder, True
    with _staging(folder) as staging:
        with np.load(models / "digits.npz") as data:
            np.savez(staging / "samples.npz", pixels=data["x_test"])
        convert = executable("model-convert")
        builds = (("edge", EDGE_PROFILE), ("cloud", CLOUD_PROFILE))
        children = [
            supervisor.start(
                f"convert-{name}",
                [
                    convert,
                    "build",
                    str(models / f"{name}.keras"),
                    "--profile",
                    profile,
                    "--out",
                    str(staging / name),
                    "--name",
                    f"{name}-digits",
                    "--samples",
                    str(staging / "samples.npz"),
                ],
            )
            for name, profile in builds
        ]
        for child in children:
            supervisor.wait(child, timeout_s=CONVERT_TIMEOUT_S)
        (staging / "samples.npz").unlink()
        _swap_in(staging, folder, recipe)
    return folder, False


def load(models: Path, artifacts: Path) -> DemoModels:
    def artifact(name: str, profile: str) -> Artifact:
        folder = artifacts / name / profile
        manifest = ArtifactManifest.model_validate_json((folder / "manifest.json").read_text())
        return Artifact(path=folder / manifest.file, manifest=manifest)

    with np.load(models / "digits.npz") as data:
        x_test, y_test = np.asarray(data["x_test"]), np.asarray(data["y_test"])
    return DemoModels(
        edge=artifact("edge", EDGE_PROFILE),
        cloud=artifact("cloud", CLOUD_PROFILE),
        x_test=x_test,
        y_test=y_test,
        training=json.loads((models / "training.json").read_text()),
    )


def quantum_train_args(iterations: int) -> list[str]:
    """``python -m quantum train``'s flags for the demo's VQC: iris, 4 qubits, the default
    circuit (z_feature_map reps 2, real_amplitudes reps 3 full), COBYLA, seeded."""
    return [
        "--dataset",
        "iris",
        "--features",
        str(QUANTUM_QUBITS),
        "--optimizer",
        "cobyla",
        "--max-iterations",
        str(iterations),
        "--seed",
        str(QUANTUM_SEED),
        "--test-fraction",
        str(QUANTUM_TEST_FRACTION),
    ]


def quantum_recipe(iterations: int) -> str:
    import quantum

    package = Path(quantum.__file__).parent
    parts = {
        "args": quantum_train_args(iterations),
        "sources": {name: _sha256(package / name) for name in QUANTUM_SOURCES},
        "versions": {
            name: metadata.version(name) for name in ("qiskit", "qiskit-machine-learning")
        },
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def ensure_quantum(cache: Path, supervisor: Supervisor, iterations: int) -> tuple[Path, bool]:
    """The folder holding the iris VQC's ``model.qml.json``, trained with the real
    ``python -m quantum train`` (a child process: it imports qiskit, which the demo does not
    need); and whether it came from the cache. One folder per iteration budget, so a short
    budget (the tests') and the demo's own do not retrain each other."""
    folder = cache / "quantum" / f"iris-vqc-{iterations}it"
    recipe = quantum_recipe(iterations)
    if _stamped(folder, recipe):
        return folder, True
    with _staging(folder) as staging:
        supervisor.run(
            "train-quantum",
            [
                sys.executable,
                "-m",
                "quantum",
                "--log-level",
                "warning",
                "train",
                *quantum_train_args(iterations),
                "--out",
                str(staging),
            ],
            cwd=ROOT,
            timeout_s=TRAIN_TIMEOUT_S,
        )
        _swap_in(staging, folder, recipe)
    return folder, False
