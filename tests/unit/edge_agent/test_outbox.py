"""The outbox on a real SQLite file: idempotent adds, answers once, bounds, TTLs, reopening."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.cloud.outbox import AnswerOutcome, Outbox, QueuedRequest, RequestState
from edge_agent.config import OutboxConfig
from edge_agent.errors import OutboxFullError
from edge_agent.reply import ReplyFormat


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000_000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dropped() -> list[tuple[str, str, int]]:
    return []


@pytest.fixture
def open_outbox(
    tmp_path: Path, clock: Clock, dropped: list[tuple[str, str, int]]
) -> Iterator[object]:
    boxes: list[Outbox] = []

    def make(**settings: object) -> Outbox:
        config = OutboxConfig.model_validate(settings)
        box = Outbox(
            tmp_path / "outbox.sqlite3",
            config=config,
            clock=clock,
            on_drop=lambda kind, reason, n: dropped.append((kind, reason, n)),
        )
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.close()


def request(i: int, **kwargs: object) -> QueuedRequest:
    values: dict[str, object] = {
        "request_id": f"r{i}",
        "payload": b"HIB1 payload %d" % i,
        "reply": ReplyFormat(model_name="m", fallback_reason="always"),
        "deadline_s": 2.0,
    }
    values.update(kwargs)
    return QueuedRequest(**values)  # type: ignore[arg-type]


def test_add_is_idempotent_by_id(open_outbox) -> None:  # type: ignore[no-untyped-def]
    box = open_outbox()
    first = box.add(request(1))
    again = box.add(request(1, payload=b"other"))
    assert first.state is again.state is RequestState.PENDING
    assert box.depth().requests == 1
    (due,) = box.due(limit=10)
    assert due.payload == b"HIB1 payload 1"  # the first one is kept


def test_an_answer_is_stored_once(open_outbox) -> None:  # type: ignore[no-untyped-def]
    box = open_outbox()
    box.add(request(1))
    outcomes = box.record_answers([("r1", b"answer"), ("r1", b"late copy"), ("zz", b"stray")])
    assert outcomes == [AnswerOutcome.STORED, AnswerOutcome.DUPLICATE, AnswerOutcome.UNKNOWN]
    stored = box.get("r1")
    assert stored is not None
    assert stored.state is RequestState.ANSWERED
    assert stored.answer == b"answer"
    assert stored.reply == ReplyFormat(model_name="m", fallback_reason="always")
    assert box.due(limit=10) == []
    assert box.depth().requests == 0
    assert box.depth().answers == 1


def test_due_is_oldest_first_and_skips_those_in_flight(open_outbox, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    box = open_outbox()
    for i in range(5):
        box.add(request(i))
        clock.now_s += 1
    assert [d.request_id for d in box.due(limit=3)] == ["r0", "r1", "r2"]
    assert [d.request_id for d in box.due(limit=3, exclude={"r0", "r2"})] == ["r1", "r3", "r4"]


def test_sent_requests_wait_for_their_retry_time(open_outbox, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    box = open_outbox()
    box.add(request(1))
    box.add(request(2))
    box.mark_sent(["r1"], retry_after_s=5.0)
    assert [d.request_id for d in box.due(limit=10)] == ["r2"]
    clock.now_s += 5
    due = {d.request_id: d.attempts for d in box.due(limit=10)}
    assert due == {"r1": 1, "r2": 0}


def test_full_outbox_refuses_new_requests_and_counts_them(open_outbox, dropped) -> None:  # type: ignore[no-untyped-def]
    box = open_outbox(max_requests=2)
    box.add(request(1))
    box.add(request(2))
    with pytest.raises(OutboxFullError, match="2 requests"):
        box.add(request(3))
    box.add(request(2))  # a known id is not a new request
    assert dropped == [("request", "full", 1)]
    assert box.get("r3") is None


def test_pending_requests_expire_after_the_ttl(open_outbox, clock: Clock, dropped) -> None:  # type: ignore[no-untyped-def]
    box = open_outbox(ttl_s=60, answer_ttl_s=30)
    box.add(request(1))
    box.add(request(2))
    box.record_answers([("r2", b"a2")])
    clock.now_s += 31
    box.purge()
    assert box.get("r2") is None  # the answer waited 31 s > 30 s
    assert box.get("r1") is not None
    clock.now_s += 30
    assert box.get("r1") is None  # expired requests are gone even before a purge
    box.purge()
    assert sorted(dropped) == [("answer", "expired", 1), ("request", "expired", 1)]
    assert box.depth() == box.depth().__class__(requests=0, answers=0, telemetry=0)


def test_telemetry_is_bounded_by_dropping_the_oldest(open_outbox, dropped) -> None:  # type: ignore[no-untyped-def]
    box = open_outbox(max_telemetry=2)
    seqs = [box.add_telemetry(b"t%d" % i) for i in range(3)]
    assert [payload for _, payload in box.telemetry(limit=10)] == [b"t1", b"t2"]
    assert dropped == [("telemetry", "full", 1)]
    box.remove_telemetry([seqs[1]])
    assert [payload for _, payload in box.telemetry(limit=10)] == [b"t2"]
    assert box.telemetry(limit=10, exclude={seqs[2]}) == []


def test_everything_survives_reopening(open_outbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    box = open_outbox()
    box.add(request(1))
    box.add(request(2))
    box.record_answers([("r2", b"a2")])
    box.add_telemetry(b"t")
    box.close()
    again = open_outbox()
    assert again.depth().requests == 1
    assert again.depth().answers == 1
    assert again.depth().telemetry == 1
    stored = again.get("r2")
    assert stored is not None
    assert stored.answer == b"a2"
    mode = sqlite3.connect(tmp_path / "outbox.sqlite3").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


def test_a_killed_writer_loses_nothing_it_committed(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys\n"
        "from edge_agent.cloud.outbox import Outbox, QueuedRequest\n"
        "from edge_agent.config import OutboxConfig\n"
        "box = Outbox(sys.argv[1], config=OutboxConfig())\n"
        "for i in range(50):\n"
        "    box.add(QueuedRequest(request_id=f'k{i}', payload=b'p', deadline_s=1.0))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    path = tmp_path / "outbox.sqlite3"
    done = subprocess.run([sys.executable, "-c", code, str(path)], check=False)
    assert done.returncode == -9
    box = Outbox(path, config=OutboxConfig())
    try:
        assert box.depth().requests == 50
        assert len(box.due(limit=100)) == 50
    finally:
        box.close()


def test_a_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path, config=OutboxConfig())
    try:
        box.add(request(1))
        assert box.depth().requests == 1
    finally:
        box.close()
    assert [p.name.startswith("outbox.sqlite3.corrupt-") for p in tmp_path.iterdir()].count(
        True
    ) == 1


def test_a_request_failing_max_failures_times_becomes_a_dead_letter(  # type: ignore[no-untyped-def]
    open_outbox, clock: Clock, dropped: list[tuple[str, str, int]]
) -> None:
    box = open_outbox(max_failures=3, answer_ttl_s=100)
    box.add(request(1))
    box.add(request(2))
    assert not box.mark_failed("r1", "boom 1", retry_after_s=5)
    assert [d.request_id for d in box.due(10)] == ["r2"]  # r1 backs off
    clock.now_s += 5
    assert not box.mark_failed("r1", "boom 2", retry_after_s=5)
    assert box.mark_failed("r1", "boom 3", retry_after_s=5)
    clock.now_s += 10
    assert [d.request_id for d in box.due(10)] == ["r2"]  # never sent again
    stored = box.get("r1")
    assert stored is not None
    assert stored.state is RequestState.DEAD
    assert stored.failure == "boom 3"
    assert (box.depth().requests, box.depth().dead) == (1, 1)
    assert not box.mark_failed("r1", "again", retry_after_s=5)  # no longer pending
    clock.now_s += 100
    box.purge()
    assert box.get("r1") is None
    assert ("dead", "expired", 1) in dropped
    assert box.depth().dead == 0


def test_an_outbox_of_schema_1_is_migrated(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE requests (id TEXT PRIMARY KEY, payload BLOB NOT NULL, reply TEXT NOT NULL,"
        " deadline_s REAL NOT NULL, created_s REAL NOT NULL, expires_s REAL NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_s REAL NOT NULL, state TEXT NOT NULL,"
        " answer BLOB, answered_s REAL);"
        "INSERT INTO requests VALUES ('old', x'00', '{\"model_name\": \"m\"}', 2, 1, 9e9, 0, 0,"
        " 'pending', NULL, NULL);"
        "PRAGMA user_version = 1;"
    )
    db.close()
    box = Outbox(path, config=OutboxConfig(max_failures=1), clock=clock)
    try:
        assert box.depth().requests == 1
        assert box.mark_failed("old", "cannot send", retry_after_s=1)
        stored = box.get("old")
        assert stored is not None
        assert stored.state is RequestState.DEAD
    finally:
        box.close()
