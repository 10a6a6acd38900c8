from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import ModelConfig
from edge_agent.errors import InputError, ModelLoadError
from edge_agent.loader import ModelLoader
from edge_agent.models import load_model
from edge_agent.runtime import RuntimeInfo
from tests.support.models import DIGITS_INPUT, DIGITS_LABELS, DIGITS_OUTPUT, DigitsModels


def _config(path: Path, **extra: object) -> ModelConfig:
    return ModelConfig.model_validate({"name": "digits", "path": path, **extra})


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({"image": np.zeros((1, 64), np.float32)}, "no input 'image'"),
        ({}, "input 'pixels' is missing"),
        ({DIGITS_INPUT: np.zeros((1, 64), np.float64)}, "is FP64; the model takes FP32"),
        ({DIGITS_INPUT: np.zeros((1, 64), np.int8)}, "is INT8"),
        ({DIGITS_INPUT: np.zeros((64,), np.float32)}, "shape [64]"),
        ({DIGITS_INPUT: np.zeros((2, 65), np.float32)}, "shape [2, 65]; the model takes [-1, 64]"),
        ({DIGITS_INPUT: np.zeros((0, 64), np.float32)}, "shape [0, 64]"),
    ],
)
def test_inputs_that_do_not_fit_are_input_errors(
    runtime: RuntimeInfo, digits: DigitsModels, inputs: dict[str, np.ndarray], fragment: str
) -> None:
    model = load_model(_config(digits.model("int8")), runtime)
    with pytest.raises(InputError) as excinfo:
        model.infer(inputs)
    assert fragment in str(excinfo.value)
    assert "model 'digits'" in str(excinfo.value)
    # A refused request holds no worker.
    assert model.infer({DIGITS_INPUT: np.zeros((1, 64), np.float32)})[DIGITS_OUTPUT].shape == (
        1,
        10,
    )


def test_non_contiguous_inputs_are_accepted(runtime: RuntimeInfo, digits: DigitsModels) -> None:
    model = load_model(_config(digits.model("fp32")), runtime)
    x, _ = digits.data()
    wide = np.repeat(x[:4], 2, axis=1)[:, ::2]  # a strided view equal to x[:4]
    assert not wide.flags.c_contiguous
    np.testing.assert_array_equal(
        model.infer({DIGITS_INPUT: wide})[DIGITS_OUTPUT],
        model.infer({DIGITS_INPUT: x[:4].copy()})[DIGITS_OUTPUT],
    )


def test_outputs_can_be_selected_and_unknown_ones_are_refused(
    runtime: RuntimeInfo, digits: DigitsModels
) -> None:
    model = load_model(_config(digits.model("fp32")), runtime)
    x = np.zeros((1, 64), np.float32)
    assert list(model.infer({DIGITS_INPUT: x}, [DIGITS_OUTPUT])) == [DIGITS_OUTPUT]
    with pytest.raises(InputError, match="no output 'logits'; its outputs are 'output_0'"):
        model.infer({DIGITS_INPUT: x}, ["logits"])


def test_metadata_and_labels(runtime: RuntimeInfo, digits: DigitsModels) -> None:
    model = load_model(_config(digits.model("int8"), labels=digits.labels, version="3"), runtime)
    assert model.labels == DIGITS_LABELS
    metadata = model.metadata()
    assert metadata.name == "digits"
    assert metadata.versions == ["3"]
    assert metadata.platform == "tensorflow_lite"
    assert metadata.inputs[0].shape == [-1, 64]
    assert metadata.parameters == {
        "runtime": runtime.name,
        "quantized": True,
        "threads": 1,
        "workers": 1,
        "labels": 10,
    }


def test_workers_run_requests_in_parallel_with_their_own_interpreters(
    runtime: RuntimeInfo, digits: DigitsModels
) -> None:
    model = load_model(_config(digits.model("fp32"), workers=3), runtime)
    assert model.worker_count == 3
    x, _ = digits.data()
    expected = {size: model.infer({DIGITS_INPUT: x[:size]})[DIGITS_OUTPUT] for size in range(1, 9)}
    failures: list[str] = []

    def work(offset: int) -> None:
        for i in range(40):
            size = 1 + (offset + i) % 8
            got = model.infer({DIGITS_INPUT: x[:size]})[DIGITS_OUTPUT]
            if not np.array_equal(got, expected[size]):
                failures.append(f"thread {offset} call {i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    model.close()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: tmp / "absent.tflite", "does not exist"),
        (lambda tmp: (tmp / "dir.tflite").mkdir() or tmp / "dir.tflite", "is not a file"),
        (lambda tmp: (tmp / "x.tflite").write_bytes(b"TFL3" * 10) and tmp / "x.tflite", "x.tflite"),
    ],
)
def test_load_failures_name_the_model_and_the_cause(
    runtime: RuntimeInfo, tmp_path: Path, make: object, fragment: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ModelLoadError) as excinfo:
        # probe: some runtimes crash on such files instead of raising; the child takes the hit.
        ModelLoader(runtime=runtime, probe=True).load(_config(path))
    assert str(excinfo.value).startswith("model 'digits': ")
    assert fragment in str(excinfo.value)


def test_an_unreadable_labels_file_fails_the_load(
    runtime: RuntimeInfo, digits: DigitsModels, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="cannot read labels file"):
        load_model(_config(digits.model("fp32"), labels=tmp_path / "none.txt"), runtime)
