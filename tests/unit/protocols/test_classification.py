"""Triton's classification extension as :func:`protocols.classify` computes it: shapes by the
batch dimension, values printed as Triton prints them, ordering in the output's own type, and
clear 400s for outputs that cannot be ranked."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from protocols import MessageError, classify


def _texts(table: np.ndarray) -> list[str]:
    return [entry.decode() for entry in table.reshape(-1)]


def test_a_batched_model_ranks_each_entry_with_its_labels() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    table = classify(scores, 2, batched=True, labels=("a", "b", "c"))
    assert table.shape == (2, 2)
    assert _texts(table) == ["0.700000:1:b", "0.200000:2:c", "0.500000:0:a", "0.300000:2:c"]


def test_shapes_follow_the_batch_dimension() -> None:
    row = np.arange(10, dtype=np.float32).reshape(1, 10)
    assert classify(row, 3, batched=False).shape == (3,)
    assert classify(row, 3, batched=True).shape == (1, 3)
    cube = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert _texts(classify(cube, 2, batched=True)) == [
        "11.000000:11",
        "10.000000:10",
        "23.000000:11",
        "22.000000:10",
    ]
    assert _texts(classify(cube, 2, batched=False)) == ["23.000000:23", "22.000000:22"]


def test_k_past_the_classes_answers_them_all_and_labels_may_run_short() -> None:
    table = classify(np.array([0.25, 0.75, 0.5], np.float64), 9, batched=False, labels=("x",))
    assert _texts(table) == ["0.750000:1", "0.500000:2", "0.250000:0:x"]


def test_integers_print_as_integers_and_compare_exactly() -> None:
    big = np.array([2**62 + 1, 2**62 + 2, 2**62], np.int64)  # equal once made float64
    assert _texts(classify(big, 3, batched=False)) == [
        f"{2**62 + 2}:1",
        f"{2**62 + 1}:0",
        f"{2**62}:2",
    ]
    unsigned = np.array([[3, 255, 0]], np.uint8)
    assert _texts(classify(unsigned, 2, batched=True)) == ["255:1", "3:0"]
    signed = np.array([-5, -1, -128], np.int8)
    assert _texts(classify(signed, 3, batched=False)) == ["-1:1", "-5:0", "-128:2"]


def test_ties_keep_the_lower_index_first() -> None:
    scores = np.array([1.0, 3.0, 1.0, 3.0], np.float32)
    assert _texts(classify(scores, 4, batched=False)) == [
        "3.000000:1",
        "3.000000:3",
        "1.000000:0",
        "1.000000:2",
    ]


def test_half_precision_ranks_as_floats() -> None:
    for dtype in (np.float16, ml_dtypes.bfloat16):
        scores = np.array([0.5, 2.0, 1.0], dtype)
        assert _texts(classify(scores, 2, batched=False)) == ["2.000000:1", "1.000000:2"]


def test_an_unbatched_scalar_is_one_class_and_empty_outputs_answer_none() -> None:
    assert _texts(classify(np.float32(0.5).reshape(()), 3, batched=False)) == ["0.500000:0"]
    assert classify(np.zeros((0,), np.float32), 3, batched=False).shape == (0,)
    assert classify(np.zeros((2, 0), np.float32), 3, batched=True).shape == (2, 0)
    assert classify(np.zeros((0, 5), np.float32), 3, batched=True).shape == (0, 3)


@pytest.mark.parametrize(
    ("scores", "batched", "match"),
    [
        (np.array([True, False]), False, "output 'out' is BOOL"),
        (np.array([b"a", b"b"], dtype=object), False, "output 'out' is BYTES"),
        (np.array(["a", "b"]), True, "output 'out' is BYTES"),
        (np.float32(1.0).reshape(()), True, "output 'out' is a scalar"),
    ],
)
def test_outputs_that_cannot_be_ranked_are_a_400(
    scores: np.ndarray, batched: bool, match: str
) -> None:
    with pytest.raises(MessageError, match=match) as excinfo:
        classify(scores, 1, batched=batched, output="out")
    assert excinfo.value.status == 400


def test_the_count_must_be_positive() -> None:
    with pytest.raises(MessageError, match="positive integer"):
        classify(np.ones(3, np.float32), 0, batched=False)
