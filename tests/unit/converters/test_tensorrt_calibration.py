"""The TensorRT int8 calibrator's batch: the one the plan is calibrated at (no GPU needed)."""

from __future__ import annotations

import pytest

from converters.errors import ConversionError
from converters.profiles import load_profile
from converters.targets.tensorrt import calibration_batch


def test_a_variable_batch_calibrates_at_the_profiles_opt_batch() -> None:
    jetson = load_profile("jetson-orin-trt-int8")  # batch 1 to 8, optimized for 1
    assert calibration_batch(jetson, [(-1, 3, 224, 224)]) == jetson.batch.opt == 1
    cloud = load_profile("cloud-gpu-trt-fp16")  # batch 1 to 64, optimized for 16
    assert calibration_batch(cloud, [(-1, 64), (-1, 8)]) == 16


def test_a_fixed_batch_calibrates_at_that_batch() -> None:
    jetson = load_profile("jetson-orin-trt-int8")
    assert calibration_batch(jetson, [(4, 3, 32, 32)]) == 4
    with pytest.raises(ConversionError, match="different batch sizes"):
        calibration_batch(jetson, [(4, 3), (2, 3)])
