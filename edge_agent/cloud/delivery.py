"""Delivery: one thread that empties the outbox into the cloud link and records what comes back.

Each pass: publish the retained status if asked to, record the answers that arrived (for requests it sent, and late answers the link could
not match: the outbox keeps those it queued, in one transaction per pass), drop what expired,
then, while connected, publish waiting telemetry and send due requests as far as the circuit
breaker and the link's free slots allow. While the breaker is open nothing is sent; once it is
half-open, the first request sent is the probe that closes it again.

Delivery is at least once, answers are kept once: a request is sent until an answer is stored,
with the same wire id every time (its own, kept in the outbox), and the first answer stored for
it is the one the app gets. Only a model's answer or a final error is stored: a transient error
(the hub busy, failing, or rate-limiting this device) leaves the request pending, due again after
the larger of the hub's ``retry_after_s`` and a doubling backoff with jitter, until a real answer
or its TTL; 429 is not a breaker failure, 500 and 503 are.
A request the link fails to send (an error with that message itself, not a timeout) is tried
again after a backoff, and after ``outbox.max_failures`` failures it becomes a dead letter.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from ..errors import CloudLinkError, CloudUnavailableError
from ..metrics import AgentMetrics
from .breaker import CircuitBreaker
from .link import CloudAnswer, CloudFailure, CloudLink
from .outbox import AnswerOutcome, Outbox

__all__ = ["Delivery"]

logger = logging.getLogger(__name__)

BATCH_MAX = 64
IDLE_WAIT_S = 5.0
BUSY_WAIT_S = 0.25
PURGE_INTERVAL_S = 30.0
TELEMETRY_ACK_TIMEOUT_S = 60.0
FAILURE_BACKOFF_S = 1.0
FAILURE_BACKOFF_MAX_S = 60.0


class Delivery:
    def __init__(
        self,
        *,
        outbox: Outbox,
        link: CloudLink,
        breaker: CircuitBreaker,
        metrics: AgentMetrics,
        telemetry_topic: str,
        status: Callable[[], bytes],
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._breaker = breaker
        self._metrics = metrics
        self._telemetry_topic = telemetry_topic
        self._status = status
        self._status_wanted = False
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._events: queue.SimpleQueue[tuple[str, str, bytes | None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._sending: set[str] = set()
        self._telemetry_sent: dict[int, tuple[mqtt.MQTTMessageInfo, float]] = {}  # by seq
        self._next_purge = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cloud-delivery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def publish_status(self) -> None:
        """Publish the retained status on the next pass, as it is then. Only this thread
        publishes it, so the last status published is always the newest."""
        self._status_wanted = True
        self._wake.set()

    # -- from other threads ------------------------------------------------------------------

    def on_unmatched(self, request_id: str, payload: bytes) -> None:
        """An answer the link could not match: the outbox keeps it if it queued the request."""
        self._events.put(("answer", request_id, payload))
        self._wake.set()

    def _on_result(self, request_id: str) -> Callable[[CloudAnswer | CloudFailure | None], None]:
        def done(answer: CloudAnswer | CloudFailure | None) -> None:
            if answer is None:
                self._events.put(("timeout", request_id, None))
            elif isinstance(answer, CloudFailure):
                self._events.put(("failed", request_id, answer.reason.encode("utf-8")))
            elif answer.transient:
                hint = f"{answer.status or ''}:{answer.retry_after_s or ''}"
                self._events.put(("busy", request_id, hint.encode("ascii")))
            else:
                self._metrics.cloud_round_trip_seconds.observe(answer.round_trip_s)
                self._events.put(("sent-answer", request_id, answer.payload))
            self._wake.set()

        return done

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                busy = self._pass()
            except Exception:
                logger.exception("outbox delivery pass failed; retrying")
                busy = True
            self._wake.wait(BUSY_WAIT_S if busy else IDLE_WAIT_S)
            self._wake.clear()

    def _pass(self) -> bool:
        """One round; ``True`` when work is left that the thread must come back for soon."""
        self._record_events()
        now = self._clock()
        if now >= self._next_purge:
            self._outbox.purge()
            self._next_purge = now + PURGE_INTERVAL_S
        if self._link.connected:
            self._send_status()
            self._send_telemetry(now)
            self._send_requests()
        depth = self._outbox.depth()
        self._metrics.outbox_depth.labels(kind="request").set(depth.requests)
        self._metrics.outbox_depth.labels(kind="answer").set(depth.answers)
        self._metrics.outbox_depth.labels(kind="dead").set(depth.dead)
        self._metrics.outbox_depth.labels(kind="telemetry").set(depth.telemetry)
        return bool(depth.requests or depth.telemetry or self._sending or self._telemetry_sent)

    def _record_events(self) -> None:
        answers: list[tuple[str, bytes]] = []
        acked = [seq for seq, (info, _) in self._telemetry_sent.items() if info.is_published()]
        for seq in acked:
            del self._telemetry_sent[seq]
        while True:
            try:
                kind, key, payload = self._events.get(block=False)
            except queue.Empty:
                break
            if kind == "busy":
                self._sending.discard(key)
                self._busy_again(key, (payload or b":").decode("ascii"))
                continue
            if kind == "failed":
                self._sending.discard(key)
                self._breaker.release()
                self._failed(key, (payload or b"").decode("utf-8", "replace"))
                continue
            if kind in ("sent-answer", "timeout"):
                self._sending.discard(key)
                if kind == "timeout":
                    self._breaker.record_failure()
                    self._metrics.cloud_requests.labels(outcome="timeout").inc()
                    continue
                self._breaker.record_success()
                self._metrics.cloud_requests.labels(outcome="answered").inc()
            assert payload is not None
            answers.append((key, payload))
        if acked:
            self._outbox.remove_telemetry(acked)
            self._metrics.outbox_delivered.labels(kind="telemetry").inc(len(acked))
        if not answers:
            return
        for outcome in self._outbox.record_answers(answers):
            if outcome is AnswerOutcome.STORED:
                self._metrics.outbox_delivered.labels(kind="request").inc()
            else:
                self._metrics.cloud_answers_dropped.labels(reason=outcome.value).inc()

    def _busy_again(self, wire_id: str, hint: str) -> None:
        """The cloud only answered with a transient error: the request stays pending, due again
        after the hub's hint or a doubling backoff with jitter, whichever is longer."""
        status_text, _, retry_text = hint.partition(":")
        status = int(status_text) if status_text else None
        if status == 429:
            self._breaker.release()
        else:
            self._breaker.record_failure()
        self._metrics.cloud_requests.labels(outcome="busy").inc()
        stored = self._outbox.by_wire_id(wire_id)
        attempts = stored.attempts if stored is not None else 1
        backoff_s = min(FAILURE_BACKOFF_S * 2 ** max(attempts - 1, 0), FAILURE_BACKOFF_MAX_S)
        wait_s = max(float(retry_text) if retry_text else 0.0, backoff_s * random.uniform(0.5, 1))
        self._outbox.retry_now([wire_id], after_s=wait_s)

    def _failed(self, request_id: str, reason: str) -> None:
        """The link failed this request: due again after a backoff, or a dead letter."""
        stored = self._outbox.by_wire_id(request_id)
        attempts = stored.attempts if stored is not None else 1
        backoff_s = min(FAILURE_BACKOFF_S * 2 ** max(attempts - 1, 0), FAILURE_BACKOFF_MAX_S)
        if self._outbox.mark_failed(request_id, reason, retry_after_s=backoff_s):
            self._metrics.outbox_dead_letters.inc()

    def _send_status(self) -> None:
        if not self._status_wanted:
            return
        self._status_wanted = False
        if self._link.publish(self._link.status_topic, self._status(), retain=True) is None:
            self._status_wanted = True  # not connected after all: on the next pass

    def _send_telemetry(self, now: float) -> None:
        stale = [
            seq
            for seq, (_, at) in self._telemetry_sent.items()
            if now - at > TELEMETRY_ACK_TIMEOUT_S
        ]
        for seq in stale:  # never acknowledged: send it again
            del self._telemetry_sent[seq]
        for seq, payload in self._outbox.telemetry(limit=BATCH_MAX, exclude=self._telemetry_sent):
            info = self._link.publish(self._telemetry_topic, payload)
            if info is None:
                return
            self._telemetry_sent[seq] = (info, now)

    def _send_requests(self) -> None:
        while not self._stopping:
            free = self._max_in_flight - self._link.in_flight
            if free <= 0:
                return
            due = self._outbox.due(limit=min(free, BATCH_MAX), exclude=self._sending)
            if not due:
                return
            sent: list[tuple[str, float]] = []
            for item in due:
                if not self._breaker.allow():
                    break
                try:
                    self._link.submit(
                        item.wire_id,
                        item.payload,
                        deadline=self._clock() + item.deadline_s,
                        callback=self._on_result(item.wire_id),
                    )
                except CloudUnavailableError:
                    self._breaker.release()
                    break
                except CloudLinkError as exc:  # this message cannot be sent: it alone fails
                    self._breaker.release()
                    self._outbox.mark_sent([item.wire_id], retry_after_s=item.deadline_s)
                    self._failed(item.wire_id, str(exc))
                    continue
                self._sending.add(item.wire_id)
                sent.append((item.wire_id, item.deadline_s))
            by_deadline: dict[float, list[str]] = {}
            for request_id, deadline_s in sent:
                by_deadline.setdefault(deadline_s, []).append(request_id)
            for deadline_s, request_ids in by_deadline.items():  # one transaction per deadline
                self._outbox.mark_sent(request_ids, retry_after_s=deadline_s)
            if len(sent) < len(due):
                return
