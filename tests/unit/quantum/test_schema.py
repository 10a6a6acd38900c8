"""model.qml.json: what a corrupt, inconsistent or foreign file gets told."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quantum.errors import ModelFileError
from quantum.inference import QuantumClassifier
from quantum.schema import load_model_file, save_model_file
from tests.support.quantum import small_model


def _write(tmp_path: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    result = small_model()
    assert result.path is not None
    raw = json.loads(result.path.read_text())
    change(raw)
    path = tmp_path / "model.qml.json"
    path.write_text(json.dumps(raw))
    return path


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model = small_model().model
    assert load_model_file(save_model_file(model, tmp_path / "m.json")) == model
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(format="something/else"), "not a quantum model file"),
        (lambda r: r.update(format_version=2), "format version 2"),
        (lambda r: r["weights"].pop(), r"weights for \d+ ansatz parameters"),
        (lambda r: r.update(classes=["a", "b"]), "interpretation maps to 3 classes"),
        (lambda r: r.update(classes=["a", "a", "b"]), "distinct"),
        (lambda r: r["preprocessing"]["mean"].append(0.0), "scale has 4 values, mean 5"),
        (lambda r: r["preprocessing"].update(span=[1.0, 0.0, 1.0, 1.0]), "zeros"),
        (lambda r: r["weights"].__setitem__(0, "x"), "weights.0"),
        (lambda r: r.update(num_features=5), "preprocessing takes 4 features"),
        (lambda r: r.update(surprise=1), "surprise: Extra inputs"),
        (lambda r: r["circuit"].update(num_qubits=40), "num_qubits"),
    ],
)
def test_inconsistent_files_are_refused_with_the_reason(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    with pytest.raises(ModelFileError, match=message):
        load_model_file(_write(tmp_path, change))


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "model.qml.json"
    bad.write_text('{"format": "hybrid-inference/qml", "weights": [1, 2')
    with pytest.raises(ModelFileError, match="not JSON"):
        load_model_file(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model_file(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="JSON object"):
        load_model_file(bad)
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model_file(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["circuit"]["ansatz"].update(name="mystery"), "unknown ansatz 'mystery'"),
        (lambda r: r["circuit"]["feature_map"].update(depth=3), "not depth"),
        (
            lambda r: r["circuit"]["ansatz"].update(reps=1),
            r"ansatz this qiskit builds .*\(8\).*\(12\)",
        ),
        (
            lambda r: r["circuit"].update(
                weight_parameters=[f"w{i}" for i in range(len(r["weights"]))]
            ),
            "incompatible circuit library",
        ),
    ],
)
def test_a_circuit_that_does_not_rebuild_is_refused_at_load(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    with pytest.raises(ModelFileError, match=message):
        QuantumClassifier.load(_write(tmp_path, change))
