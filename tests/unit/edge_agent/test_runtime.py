"""The interpreter backends on real digits models (no stand-ins for LiteRT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import InferenceError, ModelLoadError, RuntimeUnavailableError
from edge_agent.runtime import (
    RUNTIME_ORDER,
    RuntimeInfo,
    RuntimeName,
    backend_class,
    select_runtime,
)
from protocols import Datatype
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_OUTPUT,
    DigitsModels,
    output_scale,
    run_model_directly,
)


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
def test_signature_uses_signature_names_and_float_for_callers(
    runtime: RuntimeInfo, digits: DigitsModels, kind: str
) -> None:
    backend = runtime.new_backend()
    signature = backend.load(digits.model(kind), threads=1)
    (inp,) = signature.inputs
    (out,) = signature.outputs
    assert (inp.name, inp.datatype, inp.shape) == (DIGITS_INPUT, Datatype.FP32, (-1, 64))
    assert (out.name, out.datatype, out.shape) == (DIGITS_OUTPUT, Datatype.FP32, (-1, 10))
    if kind == "int8":
        assert inp.storage_dtype == np.int8
        assert inp.quantization is not None
        assert out.quantization is not None
        assert signature.quantized
    else:
        assert inp.storage_dtype == np.float32
        assert inp.quantization is None
        assert not signature.quantized
    backend.close()


def test_int8_backend_takes_and_gives_float(runtime: RuntimeInfo, digits: DigitsModels) -> None:
    backend = runtime.new_backend()
    backend.load(digits.model("int8"), threads=1)
    x, y = digits.data()
    got = backend.infer({DIGITS_INPUT: x})[DIGITS_OUTPUT]
    assert got.dtype == np.float32
    want = run_model_directly(runtime.name, digits.model("int8"), x)
    assert np.abs(got - want).max() <= output_scale(runtime.name, digits.model("int8")) * 1.001
    assert (got.argmax(axis=1) == y).mean() > 0.9


def test_resizes_when_the_batch_changes(runtime: RuntimeInfo, digits: DigitsModels) -> None:
    backend = runtime.new_backend()
    backend.load(digits.model("fp32"), threads=1)
    x, _ = digits.data()
    for size in (3, 3, 1, 50, 2):
        got = backend.infer({DIGITS_INPUT: x[:size]})[DIGITS_OUTPUT]
        np.testing.assert_array_equal(
            got, run_model_directly(runtime.name, digits.model("fp32"), x[:size])
        )


def test_a_closed_backend_refuses_to_run(runtime: RuntimeInfo, digits: DigitsModels) -> None:
    backend = runtime.new_backend()
    backend.load(digits.model("fp32"), threads=1)
    backend.close()
    with pytest.raises(InferenceError, match="closed"):
        backend.infer({DIGITS_INPUT: np.zeros((1, 64), np.float32)})


def test_a_corrupt_file_is_a_model_load_error(runtime: RuntimeInfo, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.tflite"
    path.write_bytes(b"\x00" * 64 + b"garbage" * 100)
    with pytest.raises(ModelLoadError, match=r"corrupt\.tflite") as excinfo:
        runtime.new_backend().load(path, threads=1)
    assert excinfo.value.__cause__ is not None


def test_auto_picks_the_first_runtime_that_imports() -> None:
    chosen = select_runtime()
    assert chosen.name in RUNTIME_ORDER
    for earlier in RUNTIME_ORDER[: RUNTIME_ORDER.index(chosen.name)]:
        with pytest.raises(RuntimeUnavailableError):
            backend_class(earlier).probe()


def _importable(name: RuntimeName) -> bool:
    try:
        backend_class(name).probe()
    except RuntimeUnavailableError:
        return False
    return True


@pytest.mark.parametrize("name", RUNTIME_ORDER)
def test_each_runtime_either_serves_or_says_why_not(
    name: RuntimeName, digits: DigitsModels
) -> None:
    if not _importable(name):
        with pytest.raises(RuntimeUnavailableError) as excinfo:
            select_runtime(name)
        assert name in str(excinfo.value)
        assert "ai-edge-litert" in str(excinfo.value)  # says what to install
        return
    chosen = select_runtime(name)
    assert chosen.name == name
    assert chosen.version
    backend = chosen.new_backend()
    assert backend.runtime == name
    backend.load(digits.model("fp16"), threads=1)
    x, _ = digits.data()
    assert backend.infer({DIGITS_INPUT: x[:2]})[DIGITS_OUTPUT].shape == (2, 10)
