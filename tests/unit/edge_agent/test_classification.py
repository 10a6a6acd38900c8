from __future__ import annotations

import numpy as np
import pytest

from edge_agent.api.classification import classification_count, classify
from edge_agent.errors import InputError


def test_top_k_per_row_best_first_with_labels() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    out = classify(scores, 2, ("a", "b", "c"))
    assert out.shape == (2, 2)
    assert out.tolist() == [
        [b"0.700000:1:b", b"0.200000:2:c"],
        [b"0.500000:0:a", b"0.300000:2:c"],
    ]


def test_without_labels_and_k_past_the_classes() -> None:
    out = classify(np.array([0.25, 0.75], np.float32), 5, ())
    assert out.tolist() == [b"0.750000:1", b"0.250000:0"]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_classification_count_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(InputError, match="positive integer"):
        classification_count("out", value)


def test_scalars_cannot_be_classified() -> None:
    with pytest.raises(InputError):
        classify(np.float32(1.0).reshape(()), 1, ())
