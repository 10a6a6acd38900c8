from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.confidence import as_probabilities, confidence, row_confidences


def test_max_probability_is_the_top_class() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    np.testing.assert_allclose(row_confidences(as_probabilities(p), "max_probability"), [0.7, 0.8])
    assert confidence(p, "max_probability") == pytest.approx(0.7)  # the least sure row


def test_entropy_score_matches_sednas_cross_entropy_filter() -> None:
    p = [0.7, 0.2, 0.1]
    # Sedna: confidence_score = 1 + sum(p * log p) / log(len(p))
    expected = 1 + sum(x * math.log(x) for x in p) / math.log(len(p))
    assert confidence(np.array([p]), "entropy") == pytest.approx(expected)


def test_entropy_score_bounds() -> None:
    uniform = np.full((1, 10), 0.1)
    one_hot = np.eye(10)[[3]]
    assert confidence(uniform, "entropy") == pytest.approx(0.0, abs=1e-12)
    assert confidence(one_hot, "entropy") == pytest.approx(1.0)  # 0 * log 0 taken as 0


def test_logits_go_through_a_softmax() -> None:
    logits = np.array([[2.0, 1.0, -3.0]])
    probs = as_probabilities(logits)
    np.testing.assert_allclose(probs.sum(axis=1), [1.0])
    assert probs[0, 0] == pytest.approx(math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(-3)))


def test_probabilities_are_left_alone_unless_asked() -> None:
    p = np.array([[0.6, 0.4]])
    np.testing.assert_allclose(as_probabilities(p), p)
    forced = as_probabilities(p, softmax=True)
    assert forced[0, 0] == pytest.approx(1 / (1 + math.exp(-0.2)))
    scores = np.array([[3.0, 1.0]])
    np.testing.assert_allclose(as_probabilities(scores, softmax=False), scores)


def test_higher_rank_outputs_are_rows_along_the_last_axis() -> None:
    p = np.zeros((2, 3, 4))
    p[..., 0] = 1.0
    p[1, 2] = [0.25, 0.25, 0.25, 0.25]
    assert as_probabilities(p).shape == (6, 4)
    assert confidence(p, "max_probability") == pytest.approx(0.25)


def test_scores_without_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="last axis"):
        as_probabilities(np.zeros((2, 0)))


def test_dequantized_int8_probabilities_are_taken_as_they_are() -> None:
    scale = 1 / 256
    p = np.round(np.array([[0.905, 0.05, 0.03, 0.015]]) / scale) * scale  # sums to 0.996
    p[0, 0] += 4 * scale
    np.testing.assert_allclose(as_probabilities(p), p)
    assert confidence(p, "max_probability") == pytest.approx(p[0, 0])
