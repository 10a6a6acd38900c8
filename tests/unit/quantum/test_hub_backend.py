"""The hub's quantum backend on its own: what it declares, answers and refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.backends.base import BackendOptions, load_backend_class
from cloud_hub.errors import BadRequestError, ConfigError, ModelLoadError
from protocols import Datatype
from quantum.inference import QuantumClassifier
from tests.support.quantum import small_model


def _path() -> Path:
    path = small_model().path
    assert path is not None
    return path


def test_declares_features_in_and_probabilities_and_label_out() -> None:
    backend = load_backend_class("quantum").load(_path(), BackendOptions())
    try:
        assert [(s.name, s.datatype, s.shape) for s in backend.inputs] == [
            ("features", Datatype.FP32, (-1, 4))
        ]
        assert [(s.name, s.datatype, s.shape) for s in backend.outputs] == [
            ("probabilities", Datatype.FP32, (-1, 3)),
            ("label", Datatype.BYTES, (-1,)),
        ]
        assert "experimental" in backend.name
        assert backend.parameters["experimental"] is True  # type: ignore[attr-defined]
        assert backend.labels == ["setosa", "versicolor", "virginica"]  # type: ignore[attr-defined]
    finally:
        backend.close()


def test_answers_match_the_classifier() -> None:
    result = small_model()
    backend = load_backend_class("quantum").load(_path(), BackendOptions())
    x = result.split.x_test.astype(np.float32)
    out = backend.infer({"features": x})
    expected = QuantumClassifier(result.model).predict_proba(x)
    assert out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-6)
    names = [c.encode() for c in result.model.classes]
    assert out["label"].tolist() == [names[i] for i in expected.argmax(axis=1)]


def test_simulator_parameters_are_checked() -> None:
    cls = load_backend_class("quantum")
    sampled = cls.load(_path(), BackendOptions(parameters={"shots": 2000, "seed": 1}))
    assert sampled.name == "quantum:statevector:2000 shots (experimental)"
    with pytest.raises(ConfigError, match="not speed"):
        cls.load(_path(), BackendOptions(parameters={"speed": "max"}))
    with pytest.raises(ConfigError, match="simulator must be one of"):
        cls.load(_path(), BackendOptions(parameters={"simulator": "qpu"}))
    with pytest.raises(ConfigError, match="shots must be"):
        cls.load(_path(), BackendOptions(parameters={"shots": 0}))


def test_corrupt_file_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.qml.json"
    raw = json.loads(_path().read_text())
    raw["weights"] = raw["weights"][:-1]
    bad.write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=r"model\.qml\.json: .*weights"):
        load_backend_class("quantum").load(bad, BackendOptions())


def test_non_finite_and_empty_batches_are_bad_requests() -> None:
    backend = load_backend_class("quantum").load(_path(), BackendOptions())
    validate = backend.validate  # type: ignore[attr-defined]
    validate({"features": np.ones((2, 4), np.float32)})
    with pytest.raises(BadRequestError, match=r"row\(s\) 1 hold NaN"):
        validate({"features": np.array([[1, 1, 1, 1], [1, np.nan, 1, 1]], np.float32)})
    with pytest.raises(BadRequestError, match="empty"):
        validate({"features": np.ones((0, 4), np.float32)})
    with pytest.raises(BadRequestError, match="must be finite"):
        backend.infer({"features": np.full((1, 4), np.inf, np.float32)})
