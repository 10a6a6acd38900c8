"""The classification extension as the agent answers it: the counts read from the request
(:meth:`ReplyFormat.of`), then Triton's shapes (``protocols.classify``) by whether the answering
model has a batch dimension, then the encoding the app asked for (:func:`encode_answer`)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_agent.api.answers import encode_answer
from edge_agent.reply import ReplyFormat
from protocols import InferenceRequest, MessageError


def _answer(scores: np.ndarray, k: int, *, batched: bool, labels: tuple[str, ...] = ()) -> Any:
    """The JSON output ``out`` of an answer whose request asked for ``k`` classes of it."""
    encoded = encode_answer(
        {"out": scores},
        reply=ReplyFormat(classification={"out": k}),
        batched=batched,
        labels=labels,
        model_name="m",
        model_version="1",
        request_id="r",
        parameters={"served_by": "edge"},
    )
    (output,) = json.loads(encoded.header)["outputs"]
    assert output["datatype"] == "BYTES"
    return output


def test_top_k_per_entry_of_a_batched_model_best_first_with_labels() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    out = _answer(scores, 2, batched=True, labels=("a", "b", "c"))
    assert out["shape"] == [2, 2]
    assert out["data"] == ["0.700000:1:b", "0.200000:2:c", "0.500000:0:a", "0.300000:2:c"]


def test_without_labels_and_k_past_the_classes() -> None:
    out = _answer(np.array([0.25, 0.75], np.float32), 5, batched=False)
    assert out["shape"] == [2]
    assert out["data"] == ["0.750000:1", "0.250000:0"]


def test_shapes_follow_triton_by_the_batch_dimension() -> None:
    """A ``[1, 10]`` output is ``[k]`` without a batch dimension and ``[1, k]`` with one; a
    batched ``[2, 3, 4]`` output ranks each entry's 12 values: ``[2, k]``."""
    row = np.arange(10, dtype=np.float32).reshape(1, 10)
    assert _answer(row, 3, batched=False)["shape"] == [3]
    assert _answer(row, 3, batched=True)["shape"] == [1, 3]
    cube = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = _answer(cube, 2, batched=True)
    assert out["shape"] == [2, 2]
    assert out["data"] == ["11.000000:11", "10.000000:10", "23.000000:11", "22.000000:10"]
    assert _answer(cube, 2, batched=False)["data"] == ["23.000000:23", "22.000000:22"]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_classification_count_must_be_a_positive_integer(value: object) -> None:
    request = InferenceRequest.model_validate(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}],
            "outputs": [{"name": "out", "parameters": {"classification": value}}],
        }
    )
    with pytest.raises(MessageError, match="positive integer") as excinfo:
        ReplyFormat.of(request)
    assert excinfo.value.status == 400


def test_scalars_cannot_be_classified() -> None:
    with pytest.raises(MessageError):
        _answer(np.float32(1.0).reshape(()), 1, batched=True)
