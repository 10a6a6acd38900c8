"""CloudLink: the agent's MQTT 5 session with the broker that the hubs listen on.

- Persistent session (clean start off, ``session_expiry_s``), so answers published while the agent
  is away wait for it at the broker; reconnects with backoff (``reconnect_min_s`` doubling up to
  ``reconnect_max_s``); ``TCP_NODELAY`` on the socket, as small QoS 1 messages otherwise wait on
  Nagle's algorithm for tens of milliseconds.
- Last Will: the retained status turns ``offline`` when the agent vanishes; on every connect the
  agent publishes its retained ``online`` status (through ``on_connect``).
- Requests: QoS 1 on ``hybrid/v1/{device_id}/infer/request`` with Response Topic
  ``hybrid/v1/{device_id}/infer/response``, Correlation Data = the request id and Message Expiry =
  the time left to the deadline. A request not answered within ``retry_interval_s`` is sent again
  with the same id (the hub answers a repeat from its record), and again on every reconnect,
  until its deadline. The waits double from ``retry_interval_s``
  (up to ``RETRY_MAX_S``) plus the payload's size at ``RESEND_BYTES_PER_S``, and no copy is sent while the last one is still on its way to the
  broker (a large message takes a while): a request is published once per attempt. The first answer resolves it; later answers, and answers to ids nobody here
  waits for, go to ``on_unmatched`` (the outbox keeps those it queued; the rest are dropped and
  counted).
- An error reply whose status may change on retry (``TRANSIENT_ERROR_STATUSES``: 429, 500, 503,
  ...) does not end the request: the next copy goes after the larger of the hub's
  ``retry_after_s`` and the doubled wait with jitter (half to all of it), within the deadline.
  When no copy can go before the deadline, or the deadline passes, the callback gets that last
  error as a :class:`CloudAnswer` with ``transient`` set (never an answer to keep).
- At most ``max_in_flight`` requests await answers at once.
- Other subscriptions (the updater's fleet topic) are added with :meth:`CloudLink.add_subscription`
  and made again on every connect; their messages go to their handler.

One request cannot kill the link: an exception while sending a request, in the timer or in any
paho callback is caught, counted in ``edge_agent_cloud_link_errors_total`` and logged with the
request it concerns, and fails that request alone (:class:`CloudFailure`). A watchdog thread
starts the timer or paho's network thread again should one die anyway. The time of the last
answer received is kept (:meth:`CloudLink.health`): a connection that is up but carries nothing
shows there.

Callbacks run on paho's network thread or the link's timer thread: they must be quick and must
not block on the link. No lock of the link is held while calling paho, and none is taken in a
callback that paho makes under its own locks (``on_publish`` runs under paho's outgoing-message
lock), so the two cannot wait on each other.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import logging
import math
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import (
    HUB_STATUS_SUBSCRIPTION,
    DeviceState,
    HubStatus,
    content_type_of,
    hub_id_of,
    infer_request_topic,
    infer_response_topic,
    status_topic,
    transient_error,
)
from protocols.envelope import split_frame

from ..config import CloudConfig
from ..errors import CloudLinkError, CloudUnavailableError
from ..metrics import AgentMetrics

__all__ = ["AnswerCallback", "CloudAnswer", "CloudFailure", "CloudLink"]

logger = logging.getLogger(__name__)

STOP_PUBLISH_TIMEOUT_S = 2.0
TIMER_TICK_S = 0.02
"""Resends and deadlines are handled at most this late; coarser ticks let the timer sleep through
the stale entries of requests answered since they were scheduled."""
RETRY_MAX_S = 30.0
"""The longest wait between two copies of a request (before the size allowance)."""
RESEND_BYTES_PER_S = 16 * 1024 * 1024
"""A copy's wait grows by its size at this rate: a large request needs time to reach the hub,
be decoded, run and come back before another copy could help."""
WATCHDOG_INTERVAL_S = 1.0
"""How often the watchdog checks that the timer and paho's network thread still run."""
CORRELATION_MAX_BYTES = 65_535
"""MQTT 5 binary data (Correlation Data) holds at most this many bytes."""

_MESSAGE_EXPIRY = 0x02
_CONTENT_TYPE = 0x03
_RESPONSE_TOPIC = 0x08
_CORRELATION_DATA = 0x09


@dataclass(frozen=True, kw_only=True, slots=True)
class CloudAnswer:
    request_id: str
    payload: bytes
    """The hub's MQTT answer: an OIP response or ``{"id", "error"}``, JSON or ``HIB1``."""
    round_trip_s: float
    """From the first send to this answer."""
    attempts: int
    transient: bool = False
    """``payload`` is an error that may change on retry (the hub busy, rate-limited, failing):
    the last thing heard before the deadline; not an answer to keep."""
    status: int | None = None
    """A transient error's status."""
    retry_after_s: float | None = None
    """A transient error's hint: the hub takes no copy before this many seconds."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CloudFailure:
    """The link failed this one request (it could not be published, for one); it is not
    retried by the link. ``reason`` is safe to show the app."""

    request_id: str
    reason: str


AnswerCallback = Callable[[CloudAnswer | CloudFailure | None], None]
"""Called once per request: the answer, a :class:`CloudFailure`, or ``None`` at the deadline
(or when the link stops)."""

_F = TypeVar("_F", bound=Callable[..., None])


def _guarded(where: str) -> Callable[[_F], _F]:
    """A paho callback that never raises into paho (which would end its network thread): the
    exception is counted under ``where`` and logged."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def guarded(self: CloudLink, *args: Any) -> None:
            try:
                method(self, *args)
            except Exception:
                self._link_error(where)

        return guarded  # type: ignore[return-value]

    return wrap


def _utf8(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _variable_int(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _PackedProperties(Properties):
    """PUBLISH properties packed by hand, once per send: paho only calls ``pack`` on them, and
    building a ``Properties`` attribute by attribute costs more than the rest of a send."""

    _packed: bytes

    def __init__(self, packed: bytes) -> None:  # no super().__init__: nothing else is read
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        return self._packed

    def __str__(self) -> str:
        return f"[packed properties, {len(self._packed)} bytes]"

    __repr__ = __str__


def request_properties(
    *, response_topic: bytes, correlation: bytes, expiry_s: int, content_type: bytes
) -> Properties:
    """The MQTT 5 properties of a request (Response Topic, Correlation Data, Message Expiry,
    Content Type), packed as the specification lays them out."""
    body = b"".join(
        (
            bytes((_MESSAGE_EXPIRY,)),
            struct.pack("!I", expiry_s),
            bytes((_CONTENT_TYPE,)),
            _utf8(content_type),
            bytes((_RESPONSE_TOPIC,)),
            _utf8(response_topic),
            bytes((_CORRELATION_DATA,)),
            _utf8(correlation),
        )
    )
    return _PackedProperties(_variable_int(len(body)) + body)


class _Pending:
    __slots__ = (
        "attempts",
        "busy",
        "callbacks",
        "deadline",
        "first_sent",
        "info",
        "next_send",
        "payload",
        "scheduled",
    )

    def __init__(self, payload: bytes, deadline: float, callback: AnswerCallback) -> None:
        self.payload = payload
        self.deadline = deadline
        self.callbacks = [callback]
        self.attempts = 0
        self.first_sent = 0.0
        self.next_send = 0.0
        self.scheduled = 0.0
        self.busy: CloudAnswer | None = None
        """The last transient error the hub answered this request with."""
        self.info: mqtt.MQTTMessageInfo | None = None
        """The last copy published: while the broker has not acknowledged it, no other goes."""

    def on_its_way(self) -> bool:
        """The last copy is still being written to the broker (or waits in paho's queue)."""
        info = self.info
        if info is None:
            return False
        try:
            return not info.is_published()
        except (RuntimeError, ValueError):  # it was never queued (not connected, queue full)
            return False


class CloudLink:
    def __init__(
        self,
        config: CloudConfig,
        *,
        device_id: str,
        metrics: AgentMetrics,
        will_payload: bytes,
        on_connect: Callable[[], None],
        on_unmatched: Callable[[str, bytes], None],
        on_hubs: Callable[[bool | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._on_connect_cb = on_connect
        self._on_unmatched = on_unmatched
        self._on_hubs = on_hubs
        self._hubs: dict[str, bool] = {}
        """Each hub's retained status: online or not."""
        self.request_topic = infer_request_topic(device_id)
        self.response_topic = infer_response_topic(device_id)
        self.status_topic = status_topic(device_id)
        self._response_topic_bytes = self.response_topic.encode("utf-8")
        self._pending: dict[str, _Pending] = {}
        self._timeline: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._cond = threading.Condition()
        self._slots = threading.BoundedSemaphore(config.max_in_flight)
        self._connected = threading.Event()
        self._closing = False
        self._timer: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._network: threading.Thread | None = None
        self._last_answer_at: float | None = None
        self._last_answer_mono = 0.0
        self._last_round_trip_s: float | None = None
        self._errors = 0
        self._restarts = 0
        self._last_paho_error: str | None = None
        self.client_id = config.client_id or f"edge-{device_id}"
        self._v5 = config.protocol == "5"
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._client = self._make_client(will_payload)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the link keeps trying until the broker answers."""
        address = self._config.address
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self._config.session_expiry_s
            properties.ReceiveMaximum = min(self._config.max_in_flight, 65535)
            self._client.connect_async(
                address.host,
                address.port,
                keepalive=self._config.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        else:  # MQTT 3.1.1: a persistent session; answers come by the request id alone
            self._client.connect_async(
                address.host, address.port, keepalive=self._config.keepalive_s
            )
        self._start_network()
        self._start_timer()
        self._watchdog = threading.Thread(
            target=self._run_watchdog, name="cloud-link-watchdog", daemon=True
        )
        self._watchdog.start()
        logger.info("cloud link connecting to %s as %s", address, self.client_id)

    def stop(self, final_status: bytes | None = None) -> None:
        """Publish ``final_status`` (retained) if connected, disconnect, and end every pending
        request with ``None``."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._watchdog is not None:
            self._watchdog.join()
        if self._timer is not None:
            self._timer.join()
        if final_status is not None and self._connected.is_set():
            info = self._client.publish(self.status_topic, final_status, qos=1, retain=True)
            try:
                info.wait_for_publish(STOP_PUBLISH_TIMEOUT_S)
            except (RuntimeError, ValueError):
                logger.warning("could not publish the offline status before disconnecting")
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._metrics.cloud_connected.set(0)
        with self._cond:
            pending = list(self._pending.values())
            self._pending.clear()
        for entry in pending:
            self._slots.release()
            self._finish(entry, None)
        self._metrics.cloud_in_flight.set(0)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def health(self) -> dict[str, Any]:
        """For ``/status``: the age of the last answer received and its round trip (``None``
        before the first), and the exceptions and thread restarts the link survived."""
        last = self._last_answer_at
        return {
            "last_answer_age_s": None if last is None else round(time.time() - last, 3),
            "last_round_trip_s": (
                None if self._last_round_trip_s is None else round(self._last_round_trip_s, 6)
            ),
            "errors": self._errors,
            "thread_restarts": self._restarts,
        }

    # -- requests ----------------------------------------------------------------------------

    def submit(
        self,
        request_id: str,
        payload: bytes,
        *,
        deadline: float,
        callback: AnswerCallback,
        slot_wait_s: float = 0.0,
    ) -> None:
        """Send a request (an encoded MQTT request whose id is ``request_id``) and call
        ``callback`` once with its answer, or with ``None`` at ``deadline`` (monotonic seconds).

        A request whose id is already pending joins it (one send, both callbacks). Raises
        :class:`CloudUnavailableError` when not connected or when no slot frees within
        ``slot_wait_s``.
        """
        if self._v5:
            try:
                size = len(request_id.encode("utf-8"))
            except UnicodeEncodeError:
                size = -1
            if not 0 <= size <= CORRELATION_MAX_BYTES:
                self._errors += 1
                self._metrics.cloud_link_errors.labels(where="send").inc()
                logger.error(
                    "the cloud link refused request %s: its id is too long", _short(request_id)
                )
                raise CloudLinkError(
                    "the request id cannot travel as MQTT Correlation Data "
                    f"(at most {CORRELATION_MAX_BYTES} bytes of UTF-8)"
                )
        if not self._connected.is_set():
            raise CloudUnavailableError("the cloud link is not connected to the broker")
        with self._cond:
            entry = self._pending.get(request_id)
            if entry is not None:
                entry.callbacks.append(callback)
                return
        if slot_wait_s > 0:
            acquired = self._slots.acquire(timeout=slot_wait_s)
        else:
            acquired = self._slots.acquire(blocking=False)
        if not acquired:
            raise CloudUnavailableError(
                f"{self._config.max_in_flight} cloud requests are already in flight"
            )
        now = self._clock()
        with self._cond:
            entry = self._pending.get(request_id)
            if entry is not None:  # joined while waiting for the slot
                entry.callbacks.append(callback)
                self._slots.release()
                return
            entry = _Pending(payload, deadline, callback)
            entry.first_sent = now
            entry.attempts = 1
            entry.next_send = now + self._backoff(entry, 1)
            self._pending[request_id] = entry
            self._schedule(entry, request_id)
        self._metrics.cloud_in_flight.set(len(self._pending))
        self._send(request_id, entry, now)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False
    ) -> mqtt.MQTTMessageInfo | None:
        """Publish at QoS 1; ``None`` when not connected. ``is_published()`` on the result turns
        true once the broker acknowledged it."""
        if not self._connected.is_set():
            return None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info

    def add_subscription(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Hand every message on ``topic`` (QoS 1, retained ones too) to ``handler``, on paho's
        thread: it must be quick. Subscribed again on every connect."""
        self._subscriptions[topic] = handler
        if self._connected.is_set():
            self._client.subscribe(topic, qos=1)

    # -- sending and the timer ---------------------------------------------------------------

    def _send(self, request_id: str, entry: _Pending, now: float) -> None:
        """Publish one copy; any exception fails this request alone (never the caller's
        thread, the timer or paho's)."""
        if not self._connected.is_set():
            return  # sent again on the next connect
        try:
            props = None
            if self._v5:
                props = request_properties(
                    response_topic=self._response_topic_bytes,
                    correlation=request_id.encode("utf-8"),
                    expiry_s=max(1, math.ceil(entry.deadline - now)),
                    content_type=content_type_of(entry.payload).encode("utf-8"),
                )
            entry.info = self._client.publish(
                self.request_topic, entry.payload, qos=1, properties=props
            )
        except Exception as exc:
            self._fail(request_id, entry, f"the cloud link could not publish it: {exc}")

    def _fail(self, request_id: str, entry: _Pending, reason: str) -> None:
        """End ``entry`` with a :class:`CloudFailure` (if it still waits), logged and counted."""
        self._link_error("send", request_id)
        with self._cond:
            removed = self._pending.get(request_id) is entry
            if removed:
                del self._pending[request_id]
        if not removed:
            return
        self._slots.release()
        self._metrics.cloud_in_flight.set(len(self._pending))
        self._finish(entry, CloudFailure(request_id=request_id, reason=reason))

    def _link_error(self, where: str, request_id: str | None = None) -> None:
        """Count and log the exception being handled (call from an ``except`` block)."""
        self._errors += 1
        self._metrics.cloud_link_errors.labels(where=where).inc()
        if request_id is None:
            logger.exception("the cloud link survived an error in its %s", where)
        else:
            logger.exception(
                "the cloud link failed request %s (in its %s); other requests go on",
                _short(request_id),
                where,
            )

    def _schedule(self, entry: _Pending, request_id: str) -> None:
        """Under the lock: wake the timer at the next resend or the deadline, whichever first."""
        when = min(entry.next_send, entry.deadline)
        entry.scheduled = when
        earliest = not self._timeline or when < self._timeline[0][0] - TIMER_TICK_S
        heapq.heappush(self._timeline, (when, next(self._sequence), request_id))
        if earliest:
            self._cond.notify()

    def _start_timer(self) -> None:
        self._timer = threading.Thread(target=self._run_timer, name="cloud-link-timer", daemon=True)
        self._timer.start()

    def _run_timer(self) -> None:
        while True:
            try:
                if self._timer_pass():
                    return
            except Exception:
                self._link_error("timer")
                self._reschedule_all()
                time.sleep(TIMER_TICK_S)

    def _reschedule_all(self) -> None:
        """After an error mid-pass: every pending request back on the timeline, so that none
        is left without its resend and deadline."""
        with self._cond:
            self._timeline.clear()
            for request_id, entry in self._pending.items():
                self._schedule(entry, request_id)

    def _run_watchdog(self) -> None:
        """Start the timer or paho's network thread again if one died (each should never)."""
        while True:
            with self._cond:
                if self._closing or self._cond.wait_for(lambda: self._closing, WATCHDOG_INTERVAL_S):
                    return
            timer = self._timer
            if timer is not None and not timer.is_alive():
                self._restarted("timer")
                self._reschedule_all()
                self._start_timer()
            network = self._network
            if network is not None and not network.is_alive():
                self._restarted("network")
                self._restart_network()

    def _start_network(self) -> None:
        """paho's network thread (``loop_start``), kept to be watched."""
        self._client.loop_start()
        name = f"paho-mqtt-client-{self.client_id}"
        self._network = next((t for t in threading.enumerate() if t.name == name), None)

    def _restart_network(self) -> None:
        """A thread that died mid-packet leaves the stream out of step: connect afresh (which
        resets paho's packet state; pending requests are sent again on connect), then loop."""
        self._connected.clear()
        self._metrics.cloud_connected.set(0)
        try:
            self._client.reconnect()
        except OSError as exc:  # the loop retries with backoff
            logger.warning("cloud link: reconnecting after a restart failed: %s", exc)
        self._start_network()

    def _restarted(self, thread: str) -> None:
        self._restarts += 1
        self._metrics.cloud_link_restarts.labels(thread=thread).inc()
        logger.error("the cloud link's %s thread had died; started it again", thread)

    def _timer_pass(self) -> bool:
        """One round of resends and deadlines; ``True`` once the link is closing."""
        while True:
            resend: list[tuple[str, _Pending]] = []
            expired: list[_Pending] = []
            with self._cond:
                if self._closing:
                    return True
                now = self._clock()
                while self._timeline and self._timeline[0][0] <= now:
                    when, _, request_id = heapq.heappop(self._timeline)
                    entry = self._pending.get(request_id)
                    if entry is None or entry.scheduled != when:
                        continue  # answered, or rescheduled since
                    if now >= entry.deadline:
                        del self._pending[request_id]
                        expired.append(entry)
                        continue
                    if now >= entry.next_send:
                        if entry.on_its_way():  # not even at the broker yet: look again soon
                            entry.next_send = now + self._config.retry_interval_s
                        else:
                            entry.next_send = now + self._backoff(entry, entry.attempts + 1)
                            if self._connected.is_set():
                                entry.attempts += 1
                                resend.append((request_id, entry))
                    self._schedule(entry, request_id)
                if not resend and not expired:
                    if self._timeline:
                        self._cond.wait(max(self._timeline[0][0] - now, TIMER_TICK_S))
                    else:
                        self._cond.wait()
                    continue
            for request_id, entry in resend:
                self._metrics.cloud_retries.inc()
                self._send(request_id, entry, now)
            for entry in expired:
                self._slots.release()
                self._finish(entry, entry.busy)
            self._metrics.cloud_in_flight.set(len(self._pending))

    def _finish(self, entry: _Pending, answer: CloudAnswer | CloudFailure | None) -> None:
        for callback in entry.callbacks:
            try:
                callback(answer)
            except Exception:
                self._link_error("callback")

    # -- paho's thread -----------------------------------------------------------------------

    def _make_client(self, will_payload: bytes) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        config = self._config
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set(
                ca_certs=str(config.ca_file) if config.ca_file else None,
                certfile=str(config.cert_file) if config.cert_file else None,
                keyfile=str(config.key_file) if config.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.will_set(self.status_topic, will_payload, qos=1, retain=True)
        client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    @_guarded("connect")
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._last_paho_error = None
        if reason.is_failure:
            logger.error("the broker refused the cloud link: %s", reason)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Subscribe before anything is sent again, so that no answer comes before it.
        client.subscribe(self.response_topic, qos=1)
        if self._on_hubs is not None:
            client.subscribe(HUB_STATUS_SUBSCRIPTION, qos=1)
        for topic in list(self._subscriptions):
            client.subscribe(topic, qos=1)
        self._connected.set()
        self._metrics.cloud_connected.set(1)
        logger.info(
            "cloud link connected (session %s)",
            "resumed" if getattr(flags, "session_present", False) else "new",
        )
        try:
            self._on_connect_cb()
        except Exception:
            self._link_error("callback")
        now = self._clock()
        with self._cond:
            pending = list(self._pending.items())
            # paho sends unacknowledged copies again itself on a resumed session; only the
            # others go again here.
            resend = [(rid, entry) for rid, entry in pending if not entry.on_its_way()]
            for request_id, entry in resend:
                entry.attempts += 1
                entry.next_send = now + self._backoff(entry, entry.attempts)
                self._schedule(entry, request_id)
        for request_id, entry in resend:
            self._metrics.cloud_retries.inc()
            self._send(request_id, entry, now)

    def _backoff(self, entry: _Pending, attempts: int) -> float:
        """The wait after the ``attempts``-th copy: ``retry_interval_s`` doubled per copy,
        plus the time a copy of this size needs (``RESEND_BYTES_PER_S``)."""
        base = min(self._config.retry_interval_s * 2 ** max(attempts - 1, 0), RETRY_MAX_S)
        return float(base + len(entry.payload) / RESEND_BYTES_PER_S)

    def _jittered(self, entry: _Pending, attempts: int) -> float:
        """The wait before the next copy after a transient error: the doubled wait, cut to
        between half and all of it at random, so that devices turned away together do not
        come back together."""
        return self._backoff(entry, attempts) * random.uniform(0.5, 1.0)

    def abandon_pending(self) -> int:
        """End every request awaiting an answer now, as if its deadline had passed (every hub
        is known to be gone: nobody will answer). Returns how many."""
        with self._cond:
            pending = list(self._pending.values())
            self._pending.clear()
        for entry in pending:
            self._slots.release()
            self._finish(entry, None)
        self._metrics.cloud_in_flight.set(0)
        return len(pending)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        logger.debug("cloud link: connecting to the broker failed; retrying")

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        """Keep paho's last error (a socket's errno, for one): the disconnect's real reason."""
        if level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING):
            self._last_paho_error = text

    @_guarded("disconnect")
    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._metrics.cloud_connected.set(0)
        if was_connected:
            self._metrics.cloud_disconnects.inc()
            if not self._closing:
                logger.warning(
                    "cloud link lost the broker (%s); reconnecting",
                    disconnect_reason(
                        reason,
                        from_broker=bool(getattr(flags, "is_disconnect_packet_from_server", False)),
                        last_error=self._last_paho_error,
                        properties=properties,
                    ),
                )
        self._last_paho_error = None

    def silent_for_s(self) -> float:
        """How long requests have waited with no answer from the cloud: since the later of
        the oldest pending request's first send and the last answer; 0 with nothing pending."""
        with self._cond:
            if not self._pending:
                return 0.0
            oldest = min(entry.first_sent for entry in self._pending.values())
        return max(0.0, self._clock() - max(oldest, self._last_answer_mono))

    @property
    def hubs_online(self) -> bool | None:
        """Whether any hub's retained status says online; ``None`` when no hub publishes one."""
        if not self._hubs:
            return None
        return any(self._hubs.values())

    def _hub_status(self, hub_id: str, payload: bytes) -> None:
        before = self.hubs_online
        if not payload:  # the retained status was cleared
            self._hubs.pop(hub_id, None)
        else:
            status = HubStatus.model_validate_json(payload)
            self._hubs[hub_id] = status.state is DeviceState.ONLINE
        after = self.hubs_online
        if after != before and self._on_hubs is not None:
            logger.info(
                "cloud hubs %s",
                "online" if after else "offline" if after is False else "publish no status",
            )
            self._on_hubs(after)

    @_guarded("message")
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        hub_id = hub_id_of(message.topic)
        if hub_id is not None:
            self._hub_status(hub_id, bytes(message.payload))
            return
        if message.topic != self.response_topic:
            handler = self._subscriptions.get(message.topic)
            if handler is not None:
                try:
                    handler(bytes(message.payload))
                except Exception:
                    self._link_error("callback")
            return
        payload = bytes(message.payload)
        correlation = getattr(message.properties, "CorrelationData", None)
        request_id = bytes(correlation).decode("utf-8", "replace") if correlation else None
        if request_id is None:
            request_id = _id_in(payload)
            if request_id is None:
                self._metrics.cloud_answers_dropped.labels(reason="malformed").inc()
                logger.warning("dropped an answer with neither correlation data nor an id")
                return
        busy = transient_error(payload)
        now = self._clock()
        with self._cond:
            entry = self._pending.get(request_id)
            if entry is not None and busy is not None:
                self._last_answer_mono = now  # busy, not silent
                entry.busy = CloudAnswer(
                    request_id=request_id,
                    payload=payload,
                    round_trip_s=now - entry.first_sent,
                    attempts=entry.attempts,
                    transient=True,
                    status=busy.status,
                    retry_after_s=busy.retry_after_s,
                )
                wait_s = max(busy.retry_after_s or 0.0, self._jittered(entry, entry.attempts))
                if now + wait_s < entry.deadline:  # try again then; the timer sends it
                    self._metrics.cloud_answers_dropped.labels(reason="transient").inc()
                    entry.info = None
                    entry.next_send = now + wait_s
                    self._schedule(entry, request_id)
                    return
            if entry is not None:
                del self._pending[request_id]
        if entry is None:
            if busy is not None:  # a transient error for a request no longer waiting here
                self._metrics.cloud_answers_dropped.labels(reason="transient").inc()
                return
            try:
                self._on_unmatched(request_id, payload)
            except Exception:
                self._link_error("callback")
            return
        self._slots.release()
        self._metrics.cloud_in_flight.set(len(self._pending))
        if busy is not None:  # no copy can go before the deadline: the caller decides now
            self._finish(entry, entry.busy)
            return
        round_trip_s = now - entry.first_sent
        self._answered(round_trip_s)
        self._finish(
            entry,
            CloudAnswer(
                request_id=request_id,
                payload=payload,
                round_trip_s=round_trip_s,
                attempts=entry.attempts,
            ),
        )

    def _answered(self, round_trip_s: float) -> None:
        now = time.time()
        self._last_answer_mono = self._clock()
        self._last_answer_at = now
        self._last_round_trip_s = round_trip_s
        self._metrics.cloud_last_answer.set(now)
        self._metrics.cloud_last_round_trip.set(round_trip_s)


def disconnect_reason(
    reason: Any, *, from_broker: bool, last_error: str | None, properties: Any = None
) -> str:
    """What ended a connection, in words: the broker's DISCONNECT reason (and its Reason String)
    when it sent one; otherwise paho's reason with the socket error paho logged, or that the
    broker closed the connection without a word."""
    text = str(reason)
    if from_broker:
        said = getattr(properties, "ReasonString", None)
        return f"the broker disconnected us: {text}" + (f" ({said})" if said else "")
    if last_error:
        return f"{text}: {last_error}"
    if text == "Unspecified error":
        return (
            "the connection closed without a DISCONNECT from the broker (broker stopped or "
            "network lost)"
        )
    return text


def _short(request_id: str) -> str:
    """A request id for a log line: long ids cut, control characters escaped."""
    cut = request_id if len(request_id) <= 80 else f"{request_id[:80]}... ({len(request_id)} chars)"
    return repr(cut)


def _id_in(payload: bytes) -> str | None:
    """The ``id`` of an answer without Correlation Data (an MQTT 3.1.1 bridge in between)."""
    try:
        header, _ = split_frame(payload)
        value = json.loads(bytes(header)).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
