"""CloudGateway: what the router calls to reach the cloud, and what keeps queued requests.

    router ──infer()──► breaker ──► CloudLink ──MQTT──► broker ──► hub(s)
           ──enqueue()─► Outbox ◄── Delivery ──┘
           ──lookup()──► Outbox

What goes up is decoded here: :meth:`infer` returns a :class:`CloudResult`, :meth:`enqueue` and
:meth:`lookup` a :class:`QueuedCall` (with its answer decoded once it has one), so neither the
router nor the local API sees an MQTT payload or an outbox row.

:meth:`infer` is synchronous: it fails fast (:class:`CloudUnavailableError`) when the link is
down, the breaker is open or no slot frees in time, and otherwise waits for the answer until the
call's deadline (:class:`CloudTimeoutError`), the link sending it again meanwhile.
:meth:`enqueue` puts a request in the on-disk outbox, from which :class:`Delivery` sends it when
the cloud can be reached; its answer waits there for :meth:`lookup`.

Request identity: every cloud call travels under a wire id of its own (:func:`new_wire_id`, a
random UUID), never under the app's id, which stays here and goes back to the app only. So two
apps that use the same ids, or an app whose counter restarts, can never be given each other's
answers, and the hub's dedup record (per device and id) only ever joins copies of one call. A
queued request keeps its wire id in the outbox (inside its stored payload too), so the copies sent
after an agent restart are still the same call to the hub.

Transient errors (``TRANSIENT_ERROR_STATUSES``: the hub busy, failing or rate-limiting this
device) are retried by the link within the deadline; if that is all the cloud said by then,
:meth:`infer` raises :class:`CloudUnavailableError` with the cause (the router then answers
locally marked degraded, queues, or fails, per ``on_cloud_unavailable``), and the outbox keeps a
queued request pending. 500, 503 and the like count as breaker failures; 429 does not (the hub
is up and asks this device alone to slow down), it only ends the call.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocols import DeviceState, DeviceStatus, encode_mqtt_request, telemetry_topic

from ..config import CloudConfig
from ..errors import (
    CloudLinkError,
    CloudPayloadTooLargeError,
    CloudRequestError,
    CloudTimeoutError,
    CloudUnavailableError,
)
from ..metrics import AgentMetrics
from ..reply import ReplyFormat
from .breaker import BreakerState, CircuitBreaker
from .calls import CloudCall, CloudResult, QueuedCall, call_digest, decode_answer
from .delivery import Delivery
from .link import CloudAnswer, CloudFailure, CloudLink
from .outbox import Outbox, QueuedRequest, RequestState, StoredRequest
from .telemetry import TelemetryReporter, telemetry_message

__all__ = ["OUTBOX_FILENAME", "CloudGateway", "new_wire_id"]

logger = logging.getLogger(__name__)

OUTBOX_FILENAME = "outbox.sqlite3"
_WAIT_GRACE_S = 1.0


def new_wire_id() -> str:
    """A request id for the wire, unique to one cloud call (the app's id stays on the device)."""
    return uuid.uuid4().hex


class _Waiter:
    """One answer handed from the network thread to a waiting caller (a bare lock: cheaper to
    set and wait on than an ``Event``)."""

    __slots__ = ("_lock", "answer")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.answer: CloudAnswer | CloudFailure | None = None

    def __call__(self, answer: CloudAnswer | CloudFailure | None) -> None:
        self.answer = answer
        self._lock.release()

    def wait(self, timeout_s: float) -> CloudAnswer | CloudFailure | None:
        self._lock.acquire(timeout=timeout_s)
        return self.answer


class CloudGateway:
    def __init__(
        self,
        config: CloudConfig,
        *,
        device_id: str,
        data_dir: Path,
        metrics: AgentMetrics,
        status: Callable[[DeviceState], bytes],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._device_id = device_id
        self._data_dir = data_dir
        self._metrics = metrics
        self._status = status
        self._clock = clock
        self.breaker = CircuitBreaker(
            failures=config.breaker.failures,
            cooldown_s=config.breaker.cooldown_s,
            half_open_probes=config.breaker.half_open_probes,
            clock=clock,
            on_change=self._breaker_changed,
        )
        metrics.cloud_breaker_state.set(BreakerState.CLOSED.gauge)
        self._outcome = {
            outcome: metrics.cloud_requests.labels(outcome=outcome)
            for outcome in ("answered", "busy", "error", "timeout", "unavailable")
        }
        self.outbox: Outbox | None = None
        self.link: CloudLink | None = None
        self._delivery: Delivery | None = None
        self._telemetry: TelemetryReporter | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the outbox and start connecting (in the background)."""
        self.outbox = Outbox(
            self._data_dir / OUTBOX_FILENAME,
            config=self.config.outbox,
            on_drop=self._dropped,
        )
        will = DeviceStatus(
            device_id=self._device_id,
            state=DeviceState.OFFLINE,
            detail={"reason": "connection lost"},
        ).model_dump_json(exclude_none=True)
        self.link = CloudLink(
            self.config,
            device_id=self._device_id,
            metrics=self._metrics,
            will_payload=will.encode("utf-8"),
            on_connect=self._connected,
            on_unmatched=self._unmatched,
            on_hubs=self._hubs_changed,
            clock=self._clock,
        )
        self._delivery = Delivery(
            outbox=self.outbox,
            link=self.link,
            breaker=self.breaker,
            metrics=self._metrics,
            telemetry_topic=telemetry_topic(self._device_id),
            status=lambda: self._status(DeviceState.ONLINE),
            max_in_flight=self.config.max_in_flight,
            clock=self._clock,
        )
        self._delivery.start()
        if self.config.telemetry_interval_s > 0:
            interval_s = self.config.telemetry_interval_s
            self._telemetry = TelemetryReporter(
                interval_s=interval_s,
                make=lambda: telemetry_message(
                    self._device_id, self._metrics.registry, interval_s=interval_s
                ),
                sink=self.queue_telemetry,
            )
            self._telemetry.start()
        self.link.start()

    def stop(self) -> None:
        """Publish the offline status, disconnect, and close the outbox. What is still queued
        stays on disk for the next start."""
        if self._telemetry is not None:
            self._telemetry.stop()
            self._telemetry = None
        if self._delivery is not None:
            self._delivery.stop()
            self._delivery = None
        if self.link is not None:
            self.link.stop(final_status=self._status(DeviceState.OFFLINE))
            self.link = None
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None

    def publish_status(self) -> None:
        """Publish the retained ``online`` status again (for example once models are loaded)."""
        if self._delivery is not None:
            self._delivery.publish_status()

    # -- requests ----------------------------------------------------------------------------

    def infer(self, call: CloudCall) -> CloudResult:
        """Run ``call`` in the cloud and wait for the answer, at most ``call.deadline_s``."""
        link = self.link
        if link is None or not link.connected:
            self._outcome["unavailable"].inc()
            raise CloudUnavailableError("the cloud link is not connected to the broker")
        if not self.breaker.allow():
            self._outcome["unavailable"].inc()
            if link.hubs_online is False:
                raise CloudUnavailableError(
                    "every cloud hub says it is offline (its Last Will, or a clean stop); "
                    "requests fail fast until one is back"
                )
            raise CloudUnavailableError(
                "the cloud circuit breaker is open after repeated timeouts; requests fail fast "
                f"for up to {self.config.breaker.cooldown_s:g} s"
            )
        start = self._clock()
        wait_s = call.deadline_s
        silent_wait_s = self.config.silent_wait_s
        if silent_wait_s is not None and link.silent_for_s() >= silent_wait_s:
            wait_s = min(wait_s, silent_wait_s)  # the cloud has just gone silent
        waiter = _Waiter()
        wire_id = new_wire_id()
        try:
            payload = self._encode(call, wire_id)
            link.submit(
                wire_id,
                payload,
                deadline=start + wait_s,
                callback=waiter,
                slot_wait_s=wait_s,
            )
        except CloudUnavailableError:
            self.breaker.release()
            self._outcome["unavailable"].inc()
            raise
        except CloudLinkError:
            self.breaker.release()
            self._outcome["error"].inc()
            raise
        except BaseException:
            self.breaker.release()
            raise
        answer = waiter.wait(wait_s + _WAIT_GRACE_S)
        if isinstance(answer, CloudFailure):  # this request alone; says nothing of the cloud
            self.breaker.release()
            self._outcome["error"].inc()
            raise CloudLinkError(f"cloud request for {call.model!r} failed: {answer.reason}")
        if answer is None:
            self.breaker.record_failure()
            self._outcome["timeout"].inc()
            raise CloudTimeoutError(
                f"the cloud did not answer for {call.model!r} within {wait_s:g} s"
            )
        if answer.transient:
            if answer.status == 429:  # the hub is up; this device is over its share
                self.breaker.release()
            else:
                self.breaker.record_failure()
            self._outcome["busy"].inc()
            raise CloudUnavailableError(
                f"the cloud could not take the request for {call.model!r} within {wait_s:g} s: "
                f"{_error_text(answer.payload)} (status {answer.status})"
            )
        self.breaker.record_success()
        self._metrics.cloud_round_trip_seconds.observe(answer.round_trip_s)
        try:
            result = decode_answer(
                answer.payload, model=call.model, round_trip_s=answer.round_trip_s
            )
        except CloudRequestError:
            self._outcome["error"].inc()
            raise
        self._outcome["answered"].inc()
        return result

    def enqueue(self, call: CloudCall, reply: ReplyFormat) -> QueuedCall:
        """Keep ``call`` in the outbox until the cloud answers it; a known id is left as it is
        (and returned as it is). ``reply`` is kept with it, for answering the app later."""
        outbox, delivery = self.outbox, self._delivery
        if outbox is None or delivery is None:
            raise CloudUnavailableError("the cloud link is not started")
        wire_id = new_wire_id()
        stored = outbox.add(
            QueuedRequest(
                request_id=call.request_id,
                wire_id=wire_id,
                payload=self._encode(call, wire_id),
                digest=call_digest(call),
                reply=reply,
                deadline_s=call.deadline_s,
            )
        )
        delivery.wake()
        return _queued(stored)

    def lookup(self, request_id: str) -> QueuedCall | None:
        """A queued request and its answer once it has one; ``None`` if unknown or expired."""
        stored = None if self.outbox is None else self.outbox.get(request_id)
        return None if stored is None else _queued(stored)

    def queue_telemetry(self, payload: bytes) -> None:
        if self.outbox is not None and self._delivery is not None:
            self.outbox.add_telemetry(payload)
            self._delivery.wake()

    def detail(self) -> dict[str, Any]:
        """For ``/status``: link, breaker and outbox."""
        link, outbox = self.link, self.outbox
        detail: dict[str, Any] = {
            "broker": self.config.broker,
            "connected": bool(link and link.connected),
            "breaker": self.breaker.state.value,
            "in_flight": link.in_flight if link else 0,
            "hubs_online": link.hubs_online if link else None,
        }
        if link is not None:
            detail.update(link.health())
        if outbox is not None:
            depth = outbox.depth()
            detail["outbox"] = {
                "requests": depth.requests,
                "answers": depth.answers,
                "dead": depth.dead,
                "telemetry": depth.telemetry,
            }
        return detail

    # -- callbacks ---------------------------------------------------------------------------

    def _encode(self, call: CloudCall, wire_id: str) -> bytes:
        payload = encode_mqtt_request(
            call.model,
            call.inputs,
            model_version=call.version,
            id=wire_id,
            parameters=dict(call.parameters) or None,
            outputs=call.outputs,
            binary=True,
            binary_outputs=True,
        )
        limit = self.config.payload_max_bytes
        if len(payload) > limit:
            raise CloudPayloadTooLargeError(
                f"the request for {call.model!r} is {len(payload)} bytes as an MQTT message; "
                f"the cloud takes at most {limit} (cloud.payload_max_bytes)"
            )
        return payload

    def _connected(self) -> None:
        if self._delivery is not None:
            self._delivery.publish_status()

    def _unmatched(self, request_id: str, payload: bytes) -> None:
        if self._delivery is not None:
            self._delivery.on_unmatched(request_id, payload)
        else:
            self._metrics.cloud_answers_dropped.labels(reason="unknown").inc()

    def _hubs_changed(self, online: bool | None) -> None:
        """A hub's retained status: back online closes the breaker at once (no cooldown, no
        probe); every hub offline opens it and ends the waits nobody will answer."""
        self._metrics.hub_online.set(-1 if online is None else int(online))
        if online:
            self.breaker.reset()
        elif online is False:
            self.breaker.trip()
            if self.link is not None:
                self.link.abandon_pending()
        if self._delivery is not None:
            self._delivery.wake()

    def _breaker_changed(self, state: BreakerState) -> None:
        self._metrics.cloud_breaker_state.set(state.gauge)
        if self._delivery is not None:
            self._delivery.wake()

    def _dropped(self, kind: str, reason: str, count: int) -> None:
        self._metrics.outbox_dropped.labels(kind=kind, reason=reason).inc(count)


def _error_text(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("error", "an error"))
    except (ValueError, AttributeError):
        return "an error"


def _queued(stored: StoredRequest) -> QueuedCall:
    """An outbox row as the router and the local API see it, its answer decoded."""
    answer: CloudResult | None = None
    error: CloudRequestError | CloudLinkError | None = None
    dead = stored.state is RequestState.DEAD
    if dead:
        error = CloudLinkError(
            f"the agent gave up sending this request to the cloud after repeated failures: "
            f"{stored.failure}"
        )
    elif stored.answer is not None:
        try:
            answer = decode_answer(stored.answer, model=stored.reply.model_name)
        except CloudRequestError as exc:  # the cloud answered it with an error
            error = exc
    return QueuedCall(
        request_id=stored.request_id,
        reply=stored.reply,
        attempts=stored.attempts,
        answer=answer,
        error=error,
        dead=dead,
    )
