"""The outbox: requests waiting for the cloud, their answers, and telemetry, in SQLite on disk.

One database file in ``data_dir`` (WAL mode, standard library ``sqlite3``), so what was queued
survives the agent being killed (``synchronous: normal``) or the power going (``full``).

- A request is added once per app id (adding a known id again with the same content changes
  nothing; with other content it is refused, :class:`OutboxConflictError`), waits as
  ``pending`` until an answer is recorded, then stays ``answered`` for ``answer_ttl_s`` so the
  app can fetch it; the first answer recorded wins, later ones are reported as duplicates.
- A request the link keeps failing to send (an error with that message, not a timeout) moves
  to ``dead`` after ``max_failures`` tries, with the last reason; it is not sent again and is
  kept for ``answer_ttl_s`` so the app learns what became of it.
- A pending request older than ``ttl_s`` is dropped; with ``max_requests`` rows (pending and
  answered) a new request is refused. Telemetry is bounded by dropping the oldest.
- Each request also has its wire id, the id it travels under (unique to it, stored with it and
  inside its payload): delivery sends, fails and answers requests by wire id; apps look them up
  by their own id.
- Times are seconds of the outbox's own clock, which counts the agent's running time: monotonic
  within a run (a wall-clock step, such as NTP setting the clock of a board without a
  real-time clock at boot, moves nothing), carried over restarts by the value persisted in the
  file (at each purge and at close). TTLs therefore count time the agent runs; time while it is
  stopped or the board is off does not count, and up to one purge interval of a run killed
  outright may be counted again (a TTL then ends that much later, never earlier).

One connection, guarded by a lock: the writes are small and the request path only writes here
when the cloud is out of reach.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import OutboxConfig
from ..errors import ConfigError, OutboxConflictError, OutboxFullError
from ..reply import ReplyFormat

__all__ = [
    "AnswerOutcome",
    "DueRequest",
    "Outbox",
    "OutboxDepth",
    "QueuedRequest",
    "RequestState",
    "RunningClock",
    "StoredRequest",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
_MIGRATIONS = {
    1: (
        "ALTER TABLE requests ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE requests ADD COLUMN failure TEXT",
    ),
    2: (
        "ALTER TABLE requests ADD COLUMN wire_id TEXT",
        "ALTER TABLE requests ADD COLUMN digest TEXT",
        "UPDATE requests SET wire_id = id",  # their payloads carry the app's id
    ),
}
"""Statements that bring a database of the key's schema version to the next."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    reply TEXT NOT NULL,
    deadline_s REAL NOT NULL,
    created_s REAL NOT NULL,
    expires_s REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_s REAL NOT NULL,
    state TEXT NOT NULL,
    answer BLOB,
    answered_s REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    failure TEXT,
    wire_id TEXT,
    digest TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS requests_wire ON requests (wire_id);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_due ON requests (state, next_attempt_s, created_s);
CREATE INDEX IF NOT EXISTS requests_expiry ON requests (expires_s);
CREATE TABLE IF NOT EXISTS telemetry (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    expires_s REAL NOT NULL
);
"""

DropCallback = Callable[[str, str, int], None]
"""``(kind, reason, count)``: kind ``request``, ``answer`` or ``telemetry``; reason ``full`` or
``expired``."""


class RequestState(str, enum.Enum):
    PENDING = "pending"
    ANSWERED = "answered"
    DEAD = "dead"
    """Failed ``max_failures`` times in the link; never sent again."""


class AnswerOutcome(str, enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    """The request already had its answer; this one is dropped."""
    UNKNOWN = "unknown"
    """No such request here (never queued, or expired)."""


class RunningClock:
    """The outbox's clock: ``start_s`` plus the monotonic time since it was made."""

    def __init__(self, start_s: float) -> None:
        self._start_s = start_s
        self._mono0 = time.monotonic()

    def __call__(self) -> float:
        return self._start_s + (time.monotonic() - self._mono0)


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedRequest:
    request_id: str
    """The app's id: how the app looks it up."""
    wire_id: str = ""
    """The id it travels under; the app's id when empty."""
    digest: str = ""
    """What the app asked for (:func:`~.calls.call_digest`); a known id with another digest is
    refused."""
    payload: bytes
    """The MQTT request, ready to publish."""
    reply: ReplyFormat = field(default_factory=ReplyFormat)
    """How to answer the app; stored as JSON (:meth:`ReplyFormat.to_json`)."""
    deadline_s: float
    """How long one delivery attempt may wait for its answer."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredRequest:
    request_id: str
    state: RequestState
    attempts: int
    created_s: float
    reply: ReplyFormat
    answer: bytes | None = None
    """The hub's answer as it came (an MQTT response payload)."""
    answered_s: float | None = None
    failure: str | None = None
    """Why the link failed it last (set when ``state`` is ``dead``, and on earlier failures)."""
    wire_id: str = ""
    digest: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DueRequest:
    request_id: str
    wire_id: str
    payload: bytes
    deadline_s: float
    attempts: int


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxDepth:
    requests: int
    """Pending requests."""
    answers: int
    """Answers kept for the app to fetch."""
    telemetry: int
    dead: int = 0
    """Dead letters kept for the app to see."""


class Outbox:
    def __init__(
        self,
        path: Path | str,
        *,
        config: OutboxConfig,
        clock: Callable[[], float] | None = None,
        on_drop: DropCallback | None = None,
    ) -> None:
        """``clock`` replaces the running clock (tests)."""
        self.path = Path(path)
        self._config = config
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._db = self._open()
        self._running = clock is None
        if clock is None:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'clock_s'").fetchone()
            # A new file (or one from before the running clock) starts at the wall clock, so
            # that times already stored keep their meaning.
            clock = RunningClock(time.time() if row is None else float(row[0]))
        self._clock = clock
        self._pending, self._answered, self._dead, self._telemetry = self._count()
        logger.info(
            "outbox %s: %d pending request(s), %d answer(s), %d telemetry message(s)",
            self.path,
            self._pending,
            self._answered,
            self._telemetry,
        )

    # -- requests ----------------------------------------------------------------------------

    def add(self, request: QueuedRequest) -> StoredRequest:
        """Queue ``request``; a known id is left as it is and returned. :class:`OutboxFullError`
        when full."""
        now = self._clock()
        wire_id = request.wire_id or request.request_id
        with self._lock, self._db:
            existing = self._get(request.request_id, now)
            if existing is not None:
                if request.digest and existing.digest and existing.digest != request.digest:
                    raise OutboxConflictError(
                        f"request id {request.request_id[:80]!r} is already queued for other "
                        "inputs; use a new id (an id is only reused once its answer expired)"
                    )
                return existing
            if self._pending + self._answered + self._dead >= self._config.max_requests:
                self._drop("request", "full", 1)
                raise OutboxFullError(
                    f"the outbox holds {self._config.max_requests} requests and answers already; "
                    "request not queued"
                )
            self._db.execute("DELETE FROM requests WHERE id = ?", (request.request_id,))  # expired
            self._db.execute(
                "INSERT INTO requests (id, payload, reply, deadline_s, created_s, expires_s, "
                "next_attempt_s, state, wire_id, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.request_id,
                    request.payload,
                    json.dumps(request.reply.to_json(), separators=(",", ":")),
                    request.deadline_s,
                    now,
                    now + self._config.ttl_s,
                    now,
                    RequestState.PENDING.value,
                    wire_id,
                    request.digest or None,
                ),
            )
            self._pending += 1
        return StoredRequest(
            request_id=request.request_id,
            state=RequestState.PENDING,
            attempts=0,
            created_s=now,
            reply=request.reply,
            wire_id=wire_id,
            digest=request.digest or None,
        )

    def get(self, request_id: str) -> StoredRequest | None:
        """The request and its answer, or ``None`` when unknown or expired."""
        with self._lock:
            return self._get(request_id, self._clock())

    def by_wire_id(self, wire_id: str) -> StoredRequest | None:
        """The request sent under ``wire_id``, or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM requests WHERE wire_id = ? AND expires_s > ?",
                (wire_id, self._clock()),
            ).fetchone()
            return None if row is None else self._get(row[0], self._clock())

    def knows(self, request_id: str) -> bool:
        return self.get(request_id) is not None

    def due(self, limit: int, exclude: Collection[str] = ()) -> list[DueRequest]:
        """Pending requests whose next attempt is due, oldest first, skipping the wire ids in
        ``exclude``."""
        if limit <= 0:
            return []
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT wire_id, payload, deadline_s, attempts, id FROM requests WHERE state = ? AND "
                "next_attempt_s <= ? AND expires_s > ? ORDER BY next_attempt_s, created_s LIMIT ?",
                (RequestState.PENDING.value, now, now, limit + len(exclude)),
            ).fetchall()
        due = [
            DueRequest(
                request_id=r[4], wire_id=r[0], payload=bytes(r[1]), deadline_s=r[2], attempts=r[3]
            )
            for r in rows
            if r[0] not in exclude
        ]
        return due[:limit]

    def mark_sent(self, request_ids: Iterable[str], *, retry_after_s: float) -> None:
        """Count an attempt for each (by wire id); none is due again before ``retry_after_s``."""
        ids = list(request_ids)
        if not ids:
            return
        retry_at = self._clock() + retry_after_s
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE requests SET attempts = attempts + 1, next_attempt_s = ? "
                "WHERE wire_id = ? AND state = ?",
                [(retry_at, request_id, RequestState.PENDING.value) for request_id in ids],
            )

    def retry_now(self, request_ids: Iterable[str], *, after_s: float = 0.0) -> None:
        """Make these pending requests (by wire id) due after ``after_s`` (their attempt ended
        without an answer to keep)."""
        ids = list(request_ids)
        if not ids:
            return
        when = self._clock() + after_s
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE requests SET next_attempt_s = ? WHERE wire_id = ? AND state = ?",
                [(when, request_id, RequestState.PENDING.value) for request_id in ids],
            )

    def mark_failed(self, request_id: str, reason: str, *, retry_after_s: float) -> bool:
        """Count a failure of the link with this request; ``True`` when that moved it to the
        dead-letter state (``max_failures`` reached), else it is due again after
        ``retry_after_s``."""
        now = self._clock()
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT failures FROM requests WHERE wire_id = ? AND state = ? AND expires_s > ?",
                (request_id, RequestState.PENDING.value, now),
            ).fetchone()
            if row is None:
                return False
            failures = int(row[0]) + 1
            if failures < self._config.max_failures:
                self._db.execute(
                    "UPDATE requests SET failures = ?, failure = ?, next_attempt_s = ? "
                    "WHERE wire_id = ?",
                    (failures, reason, now + retry_after_s, request_id),
                )
                return False
            self._db.execute(
                "UPDATE requests SET failures = ?, failure = ?, state = ?, payload = x'', "
                "expires_s = ? WHERE wire_id = ?",
                (
                    failures,
                    reason,
                    RequestState.DEAD.value,
                    now + self._config.answer_ttl_s,
                    request_id,
                ),
            )
            self._pending -= 1
            self._dead += 1
        logger.error(
            "outbox: request %r failed %d times in the cloud link; moved to the dead letters (%s)",
            request_id[:80],
            failures,
            reason,
        )
        return True

    def record_answers(self, answers: Sequence[tuple[str, bytes]]) -> list[AnswerOutcome]:
        """Store each answer (by wire id), in one transaction; the first answer for a request
        wins."""
        outcomes: list[AnswerOutcome] = []
        if not answers:
            return outcomes
        now = self._clock()
        expires = now + self._config.answer_ttl_s
        with self._lock, self._db:
            for request_id, payload in answers:
                cursor = self._db.execute(
                    "UPDATE requests SET state = ?, answer = ?, answered_s = ?, expires_s = ?, "
                    "payload = x'' WHERE wire_id = ? AND state = ? AND expires_s > ?",
                    (
                        RequestState.ANSWERED.value,
                        payload,
                        now,
                        expires,
                        request_id,
                        RequestState.PENDING.value,
                        now,
                    ),
                )
                if cursor.rowcount:
                    self._pending -= 1
                    self._answered += 1
                    outcomes.append(AnswerOutcome.STORED)
                elif self._db.execute(
                    "SELECT 1 FROM requests WHERE wire_id = ? AND expires_s > ?", (request_id, now)
                ).fetchone():
                    outcomes.append(AnswerOutcome.DUPLICATE)
                else:
                    outcomes.append(AnswerOutcome.UNKNOWN)
        return outcomes

    # -- telemetry ---------------------------------------------------------------------------

    def add_telemetry(self, payload: bytes) -> int:
        """Queue a telemetry message; the oldest is dropped when full. Returns its sequence."""
        now = self._clock()
        with self._lock, self._db:
            excess = self._telemetry + 1 - self._config.max_telemetry
            if excess > 0:
                self._db.execute(
                    "DELETE FROM telemetry WHERE seq IN "
                    "(SELECT seq FROM telemetry ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                self._telemetry -= excess
                self._drop("telemetry", "full", excess)
            cursor = self._db.execute(
                "INSERT INTO telemetry (payload, expires_s) VALUES (?, ?)",
                (payload, now + self._config.ttl_s),
            )
            self._telemetry += 1
            return int(cursor.lastrowid or 0)

    def telemetry(self, limit: int, exclude: Collection[int] = ()) -> list[tuple[int, bytes]]:
        """Waiting telemetry, oldest first, skipping the sequences in ``exclude``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM telemetry ORDER BY seq LIMIT ?", (limit + len(exclude),)
            ).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows if r[0] not in exclude][:limit]

    def remove_telemetry(self, seqs: Iterable[int]) -> None:
        done = list(seqs)
        if not done:
            return
        with self._lock, self._db:
            removed = 0
            for seq in done:
                removed += self._db.execute("DELETE FROM telemetry WHERE seq = ?", (seq,)).rowcount
            self._telemetry -= removed

    # -- upkeep ------------------------------------------------------------------------------

    def purge(self) -> None:
        """Drop what outlived its TTL (each kind counted through ``on_drop``), and persist the
        running clock."""
        now = self._clock()
        with self._lock, self._db:
            self._save_clock(now)
            expired = {}
            for state, kind in (
                (RequestState.PENDING, "request"),
                (RequestState.ANSWERED, "answer"),
                (RequestState.DEAD, "dead"),
            ):
                expired[kind] = self._db.execute(
                    "DELETE FROM requests WHERE state = ? AND expires_s <= ?", (state.value, now)
                ).rowcount
            telemetry = self._db.execute(
                "DELETE FROM telemetry WHERE expires_s <= ?", (now,)
            ).rowcount
            self._pending -= expired["request"]
            self._answered -= expired["answer"]
            self._dead -= expired["dead"]
            self._telemetry -= telemetry
            for kind, count in (*expired.items(), ("telemetry", telemetry)):
                if count:
                    self._drop(kind, "expired", count)

    def depth(self) -> OutboxDepth:
        return OutboxDepth(
            requests=self._pending,
            answers=self._answered,
            dead=self._dead,
            telemetry=self._telemetry,
        )

    def close(self) -> None:
        with self._lock:
            try:
                with self._db:
                    self._save_clock(self._clock())
            except sqlite3.Error as exc:
                logger.warning("outbox: could not save its clock at close: %s", exc)
            self._db.close()

    def _save_clock(self, now: float) -> None:
        if self._running:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('clock_s', ?)", (now,)
            )

    # -- internals ---------------------------------------------------------------------------

    def _drop(self, kind: str, reason: str, count: int) -> None:
        logger.warning("outbox dropped %d %s(s): %s", count, kind, reason)
        if self._on_drop is not None:
            self._on_drop(kind, reason, count)

    def _get(self, request_id: str, now: float) -> StoredRequest | None:
        row = self._db.execute(
            "SELECT state, attempts, created_s, reply, answer, answered_s, failure, wire_id, "
            "digest FROM requests "
            "WHERE id = ? AND expires_s > ?",
            (request_id, now),
        ).fetchone()
        if row is None:
            return None
        return StoredRequest(
            request_id=request_id,
            state=RequestState(row[0]),
            attempts=int(row[1]),
            created_s=float(row[2]),
            reply=ReplyFormat.from_json(json.loads(row[3])),
            answer=None if row[4] is None else bytes(row[4]),
            answered_s=row[5],
            failure=row[6],
            wire_id=row[7] or request_id,
            digest=row[8],
        )

    def _count(self) -> tuple[int, int, int, int]:
        now = self._clock()
        with self._lock:
            counts = dict(
                self._db.execute(
                    "SELECT state, COUNT(*) FROM requests WHERE expires_s > ? GROUP BY state",
                    (now,),
                ).fetchall()
            )
            (telemetry,) = self._db.execute("SELECT COUNT(*) FROM telemetry").fetchone()
        return (
            int(counts.get(RequestState.PENDING.value, 0)),
            int(counts.get(RequestState.ANSWERED.value, 0)),
            int(counts.get(RequestState.DEAD.value, 0)),
            int(telemetry),
        )

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not self.path.exists():
                raise ConfigError(f"cannot open the outbox {self.path}: {exc}") from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            logger.error("outbox %s cannot be read (%s); moved to %s", self.path, exc, aside)
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            try:
                return self._connect()
            except sqlite3.DatabaseError as again:
                raise ConfigError(f"cannot open the outbox {self.path}: {again}") from again

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"journal mode is {mode}, not wal")
            db.execute(f"PRAGMA synchronous = {self._config.synchronous.upper()}")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if not 0 <= version <= SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
            if version != 0:
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        db.execute(statement)
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        # ``with self._db`` opens and commits a transaction around several statements.
        db.isolation_level = "IMMEDIATE"
        return db
