"""ReplyFormat: what a request asks of its answer, and how a queued request keeps it on disk."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cloud.outbox import Outbox, QueuedRequest
from edge_agent.config import OutboxConfig
from edge_agent.reply import ReplyFormat
from protocols import InferenceRequest, wants_binary_output


def _request(**fields: Any) -> InferenceRequest:
    return InferenceRequest.model_validate(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}], **fields}
    )


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"parameters": {"binary_data_output": True}},
        {"parameters": {"binary_data_output": False}},
        {"outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]},
        {
            "parameters": {"binary_data_output": True},
            "outputs": [
                {"name": "a", "parameters": {"binary_data": False}},
                {"name": "a", "parameters": {"binary_data": True}},
            ],
        },
    ],
)
def test_binary_choices_follow_the_wire_rules(fields: dict[str, Any]) -> None:
    request = _request(**fields)
    reply = ReplyFormat.of(request)
    for name in ("a", "b", "c"):
        assert reply.wants_binary(name) == wants_binary_output(request, name)


def test_the_json_round_trips() -> None:
    reply = ReplyFormat(
        binary_default=True,
        binary={"a": False},
        classification={"a": 3},
        batched=False,
        model_name="m",
        fallback_reason="low_confidence",
    )
    assert ReplyFormat.from_json(json.loads(json.dumps(reply.to_json()))) == reply
    assert ReplyFormat.from_json(None) == ReplyFormat()


def test_outbox_rows_written_before_the_batched_flag_read_back(tmp_path: Path) -> None:
    """The ``reply`` JSON as agents wrote it before ``batched`` existed: the same keys, without
    it. Such rows were classified per row of a ``[batch, classes]`` output: batched."""
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, config=OutboxConfig())
    box.add(QueuedRequest(request_id="old", payload=b"p", deadline_s=1.0))
    box.close()
    earlier = {
        "binary": {"*": True, "probabilities": False},
        "classification": {"probabilities": 2},
        "model_name": "m",
        "fallback_reason": "always",
    }
    with sqlite3.connect(path) as db:
        db.execute("UPDATE requests SET reply = ? WHERE id = 'old'", (json.dumps(earlier),))
    box = Outbox(path, config=OutboxConfig())
    try:
        stored = box.get("old")
        assert stored is not None
        assert stored.reply == ReplyFormat(
            binary_default=True,
            binary={"probabilities": False},
            classification={"probabilities": 2},
            batched=True,
            model_name="m",
            fallback_reason="always",
        )
        new = ReplyFormat(classification={"p": 1}, batched=False, model_name="n")
        box.add(QueuedRequest(request_id="new", payload=b"p", reply=new, deadline_s=1.0))
        again = box.get("new")
        assert again is not None
        assert again.reply == new
    finally:
        box.close()
    with sqlite3.connect(path) as db:
        (row,) = db.execute("SELECT reply FROM requests WHERE id = 'new'").fetchone()
    assert json.loads(row) == {  # the same layout, one key more
        "binary": {"*": False},
        "classification": {"p": 1},
        "model_name": "n",
        "fallback_reason": "",
        "batched": False,
    }
