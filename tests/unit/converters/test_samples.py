from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.errors import CalibrationError
from converters.samples import generate_samples, load_samples
from converters.tensors import TensorSpec

PIXELS = TensorSpec(name="pixels", dtype="float32", shape=(-1, 64))
IMAGE = TensorSpec(name="image", dtype="float32", shape=(-1, 8, 8, 3), layout="NHWC")
TOKENS = TensorSpec(name="tokens", dtype="int32", shape=(-1, 5))


def test_a_file_is_matched_by_input_name_and_cast(tmp_path: Path) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, pixels=np.ones((7, 64), np.float64), labels=np.zeros(7))
    data = load_samples(path, [PIXELS], what="calibration")
    assert data.count == 7
    assert data.origin == "file"
    assert data.sha256 is not None
    assert len(data.sha256) == 64
    assert data.arrays["pixels"].dtype == np.float32


def test_a_single_input_takes_x_or_the_only_array(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, x=np.zeros((3, 64), np.float32), y=np.zeros(3))
    assert load_samples(path, [PIXELS], what="samples").count == 3
    np.savez(path, whatever=np.zeros((2, 64), np.float32))
    assert load_samples(path, [PIXELS], what="samples").count == 2


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"pixels": np.zeros((4, 63), np.float32)},
            "has shape [4, 63]; input 'pixels' needs [N, 64]",
        ),
        ({"pixels": np.zeros((64,), np.float32)}, "needs [N, 64]"),
        ({"pixels": np.array([["a"] * 64])}, "takes numbers"),
        ({"pixels": np.full((2, 64), np.nan, np.float32)}, "NaN"),
        ({"pixels": np.zeros((0, 64), np.float32)}, "holds no samples"),
        ({"a": np.zeros((1, 64)), "b": np.zeros((1, 64))}, "no array for input 'pixels'"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationError) as caught:
        load_samples(path, [PIXELS], what="calibration")
    assert message in str(caught.value)
    assert "calibration" in str(caught.value)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match=r"not a readable \.npz"):
        load_samples(garbage, [PIXELS], what="samples")
    with pytest.raises(CalibrationError, match="does not exist"):
        load_samples(tmp_path / "missing.npz", [PIXELS], what="samples")


def test_several_inputs_need_the_same_count(tmp_path: Path) -> None:
    path = tmp_path / "two.npz"
    np.savez(path, image=np.zeros((2, 8, 8, 3)), tokens=np.zeros((3, 5), np.int64))
    with pytest.raises(CalibrationError, match="different numbers of samples"):
        load_samples(path, [IMAGE, TOKENS], what="samples")
    np.savez(path, image=np.zeros((2, 8, 8, 3)), tokens=np.zeros((2, 5), np.float32))
    with pytest.raises(CalibrationError, match="takes int32"):
        load_samples(path, [IMAGE, TOKENS], what="samples")


def test_generated_samples_fit_the_inputs() -> None:
    data = generate_samples([IMAGE, TOKENS], 5, seed=1)
    assert data.origin == "generated"
    assert data.count == 5
    assert data.arrays["image"].shape == (5, 8, 8, 3)
    assert data.arrays["image"].dtype == np.float32
    assert data.arrays["image"].min() >= 0.0
    assert data.arrays["image"].max() < 1.0
    assert data.arrays["tokens"].dtype == np.int32
    again = generate_samples([IMAGE, TOKENS], 5, seed=1)
    np.testing.assert_array_equal(again.arrays["image"], data.arrays["image"])
    assert data.head(2).count == 2
    assert data.head(2).arrays["tokens"].shape == (2, 5)


def test_variable_dimensions_cannot_be_generated() -> None:
    text = TensorSpec(name="text", dtype="float32", shape=(-1, -1, 16))
    with pytest.raises(CalibrationError, match="give --samples and --calibration"):
        generate_samples([text], 4)
