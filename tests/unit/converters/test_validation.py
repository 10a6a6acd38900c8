"""Fidelity metrics and gates, on arrays whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from converters.errors import ConversionError
from converters.validation import check_gates, match_names, output_fidelity
from protocols import LatencyReport, Thresholds


def test_identical_outputs_are_perfect() -> None:
    ref = np.random.default_rng(0).random((20, 10)).astype(np.float32)
    fidelity, problems = output_fidelity("y", ref, ref.copy())
    assert problems == []
    assert fidelity.max_abs_error == 0.0
    assert fidelity.rmse == 0.0
    assert fidelity.cosine_similarity == pytest.approx(1.0)
    assert fidelity.top1_agreement == 1.0


def test_known_errors() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    got = np.array([[0.0, 1.0], [0.0, 1.0], [3.0, 4.0 + 2.0]])
    fidelity, _ = output_fidelity("y", ref, got)
    assert fidelity.max_abs_error == 2.0
    assert fidelity.mean_abs_error == pytest.approx(4.0 / 6)
    assert fidelity.rmse == pytest.approx(np.sqrt(6.0 / 6))
    assert fidelity.top1_agreement == pytest.approx(2 / 3)
    cos_last = (3 * 3 + 4 * 6) / (5 * np.hypot(3, 6))
    assert fidelity.cosine_similarity_min == pytest.approx(0.0)  # the first row is orthogonal
    assert fidelity.cosine_similarity == pytest.approx((0 + 1 + cos_last) / 3)


def test_zero_outputs_and_non_finite_values() -> None:
    zeros = np.zeros((2, 3))
    fidelity, _ = output_fidelity("y", zeros, zeros)
    assert fidelity.cosine_similarity == 1.0
    fidelity, problems = output_fidelity(
        "y", np.ones((2, 3)), np.array([[1, np.nan, 1], [1, 1, np.inf]])
    )
    assert problems == ["output 'y': 2 values are NaN or infinite"]
    assert np.isfinite(fidelity.rmse)


def test_regression_outputs_have_no_top1() -> None:
    fidelity, _ = output_fidelity("y", np.ones((4, 1)), np.ones((4, 1)))
    assert fidelity.top1_agreement is None
    fidelity, _ = output_fidelity("y", np.ones((4, 3, 2)), np.ones((4, 3, 2)))
    assert fidelity.top1_agreement is None


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ConversionError, match=r"shape \[2, 3\], the source \[2, 4\]"):
        output_fidelity("y", np.ones((2, 4)), np.ones((2, 3)))


def test_gates() -> None:
    ref = np.eye(4)
    got = ref[::-1].copy()
    fidelity, _ = output_fidelity("probs", ref, got)
    thresholds = Thresholds(min_cosine_similarity=0.99, min_top1_agreement=0.9, max_rmse=0.1)
    latency = LatencyReport(runtime="x", batch_size=1, threads=1, runs=5, p50_ms=2.0, p95_ms=3.0)
    failures = check_gates(
        thresholds,
        [fidelity],
        size_bytes=2000,
        max_size_bytes=1000,
        latency=latency,
        max_latency_ms=2.5,
    )
    assert failures == [
        "output 'probs': cosine similarity 0.000000 is below 0.99",
        "output 'probs': top-1 agreement 0.00% is below 90.00%",
        f"output 'probs': rmse {fidelity.rmse:.6g} is above 0.1",
        "size 2,000 bytes is above the limit of 1,000",
        "host latency p95 3.00 ms is above the limit of 2.5 ms",
    ]
    assert check_gates(Thresholds(), [fidelity]) == []


def test_names_match_by_name_else_by_position() -> None:
    assert match_names(["a", "b"], ["b", "a", "c"], "input") == {"a": "a", "b": "b"}
    assert match_names(["pixels"], ["serving_default_pixels:0"], "input") == {
        "pixels": "serving_default_pixels:0"
    }
    with pytest.raises(ConversionError, match="do not match"):
        match_names(["a", "b"], ["c"], "output")
