"""Training a real VQC (qiskit-machine-learning) and serving its file with our inference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantum.errors import InputError
from quantum.inference import QuantumClassifier, SimulatorOptions
from quantum.schema import load_model_file
from quantum.train import TrainConfig, train
from tests.support.quantum import SMALL, small_model


def test_ci_training_is_small_fast_and_better_than_chance() -> None:
    model = small_model().model  # trained once per test process, whichever test asks first
    assert model.training.duration_s < 60, f"CI training took {model.training.duration_s:.1f} s"
    assert model.training.iterations is not None
    assert 0 < model.training.iterations <= SMALL.max_iterations
    assert model.classes == ["setosa", "versicolor", "virginica"]
    assert model.training.train_samples + model.training.test_samples == 150
    assert model.metrics.test_accuracy is not None
    assert model.metrics.test_accuracy > 0.5  # chance is 1/3
    assert set(model.versions) >= {"qiskit", "qiskit-machine-learning", "numpy", "python"}


def test_our_inference_predicts_what_the_trained_vqc_predicts() -> None:
    result = small_model()
    classifier = QuantumClassifier(result.model)
    x = np.concatenate([result.split.x_train, result.split.x_test])
    angles = classifier.angles(x)
    vqc_proba = result.vqc.predict_proba(angles)
    vqc_index = np.asarray(result.vqc.predict(angles)).argmax(axis=1)  # one-hot rows
    ours = classifier.predict_proba(x)
    np.testing.assert_allclose(ours, vqc_proba, atol=1e-9)
    np.testing.assert_array_equal(ours.argmax(axis=1), vqc_index)
    assert list(classifier.predict(x)) == [result.model.classes[i] for i in vqc_index]


def test_saved_and_reloaded_model_gives_identical_answers() -> None:
    result = small_model()
    assert result.path is not None
    json.loads(result.path.read_text())  # plain JSON, no pickle
    reloaded = QuantumClassifier.load(result.path)
    assert load_model_file(result.path) == result.model
    x = result.split.x_test
    np.testing.assert_array_equal(
        reloaded.predict_proba(x), QuantumClassifier(result.model).predict_proba(x)
    )
    accuracy = float(np.mean(reloaded.predict(x) == result.split.y_test))
    assert accuracy == pytest.approx(result.model.metrics.test_accuracy)


def test_training_is_reproducible() -> None:
    tiny = TrainConfig(
        dataset="iris",
        num_qubits=4,
        max_iterations=12,
        max_train=24,
        seed=3,
        ansatz={"name": "real_amplitudes", "reps": 1},
    )
    first = train(tiny)
    second = train(tiny)
    assert first.model.weights == second.model.weights
    assert first.model.preprocessing == second.model.preprocessing
    other = train(TrainConfig(**{**tiny.__dict__, "seed": 4}))
    assert other.model.weights != first.model.weights


def test_batched_and_single_rows_agree() -> None:
    result = small_model()
    classifier = QuantumClassifier(result.model)
    x = result.split.x_test[:8]
    batched = classifier.predict_proba(x)
    for i in range(len(x)):
        np.testing.assert_allclose(classifier.predict_proba(x[i]), batched[i : i + 1], atol=1e-12)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-9)


def test_simulators_agree_with_the_exact_statevector() -> None:
    result = small_model()
    x = result.split.x_test
    exact = QuantumClassifier(result.model).predict_proba(x)
    aer = QuantumClassifier(result.model, SimulatorOptions(simulator="aer")).predict_proba(x)
    np.testing.assert_allclose(aer, exact, atol=1e-9)
    for simulator in ("statevector", "aer"):
        options = SimulatorOptions(simulator=simulator, shots=4096, seed=11)  # type: ignore[arg-type]
        sampled = QuantumClassifier(result.model, options).predict_proba(x)
        again = QuantumClassifier(result.model, options).predict_proba(x)
        np.testing.assert_array_equal(sampled, again)  # seeded
        np.testing.assert_allclose(sampled.sum(axis=1), 1.0)
        # 4096 shots: a probability's standard error is at most 0.008
        assert np.abs(sampled - exact).max() < 0.06
        assert not np.array_equal(sampled, exact)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (np.zeros((2, 3)), r"shape \[2, 3\]; the model takes \[batch, 4\]"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[1.0, np.nan, 0, 0], [0, 0, 0, 0], [np.inf, 0, 0, 0]]), r"row\(s\) 0, 2"),
        ([["a", "b", "c", "d"]], "must be numbers"),
    ],
)
def test_bad_features_are_refused_with_a_reason(features: object, message: str) -> None:
    classifier = QuantumClassifier(small_model().model)
    with pytest.raises(InputError, match=message):
        classifier.predict_proba(features)
