"""Edge requests over MQTT, served by the same repository, batchers and backends as HTTP.

The bridge subscribes to ``$share/<group>/hybrid/v1/+/infer/request`` so hub replicas split the
requests, decodes each payload with :mod:`protocols` and answers as docs/protocol.md says: on the
MQTT 5 Response Topic with the Correlation Data echoed, else on the device's default reply topic,
correlated by the request id.

Delivery: QoS 1 with manual acknowledgement, sent only once the answer is published, and the
MQTT 5 Receive Maximum bounds the requests in flight (the broker holds the rest). A request
repeated with the same id and the same payload (a device retrying after a lost answer) joins the
run in progress or gets its recorded final answer (:mod:`cloud_hub.answers`); the same id with
other content is another request. Each device has a token bucket and its own queue for a place
at the models, served in turn (:mod:`cloud_hub.fairness`). Requests past their Message Expiry are
dropped and counted. A bad payload gets an error reply where it has somewhere to go, is counted,
and never stops the bridge.

    message -> topic and Response Topic checks -> device's token bucket (429 + retry_after_s)
            -> decode -> record: (device, id, digest) seen? -> answer or join the run
            -> wait for a place, in turn per device -> model -> settle (final: keep) -> publish

Status: the hub's retained ``HubStatus`` on ``hybrid/v1/fleet/hubs/{client_id}/status`` is
``online`` on every connect and ``offline`` from its Last Will or a clean stop, so agents learn
at once that it went away or came back instead of waiting out their deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter, Gauge, Histogram

from protocols import (
    DecodedRequest,
    DeviceState,
    HubStatus,
    ProtocolError,
    TopicKind,
    content_type_of,
    decode_mqtt_request,
    encode_mqtt_error,
    encode_mqtt_response,
    hub_status_topic,
    infer_response_topic,
    parse_topic,
    request_subscription,
    shared_request_subscription,
    wants_binary_output,
)
from protocols.codec import BINARY_DATA, BINARY_DATA_OUTPUT, BinaryChoice
from protocols.envelope import split_frame
from protocols.errors import TopicError
from protocols.topics import FLEET, TOPIC_PREFIX

from .answers import FINAL_ERROR_STATUSES, RecentAnswers, digest
from .errors import HubError, RequestTimeoutError
from .fairness import DeviceBuckets, FairQueue
from .fleet import STATUS_SUBSCRIPTION
from .metrics import LATENCY_BUCKETS_S, HubMetrics
from .service import SERVED_BY, InferenceService
from .settings import MqttSettings

__all__ = ["MqttBridge", "RecentAnswers"]

logger = logging.getLogger(__name__)

_STATUS_SUFFIX = "/" + TopicKind.STATUS.value
_FLEET_PREFIX = f"{TOPIC_PREFIX}/{FLEET}/"
FLEET_MODELS_SUBSCRIPTION = f"{_FLEET_PREFIX}+/{TopicKind.FLEET_MODELS.value}"
"""Every device class's retained announcement, watched so a replica sees what the broker holds."""


class BridgeMetrics:
    def __init__(self, metrics: HubMetrics) -> None:
        r = metrics.registry
        self.messages = Counter(
            "hub_mqtt_requests",
            "MQTT requests by outcome: answered, error, expired, duplicate (from the record), "
            "joined (a run in progress), rate_limited, malformed",
            ["outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "hub_mqtt_rate_limited",
            "Requests refused with 429: reason rate (the device's token bucket) or waiting "
            "(the device's queue for the models is full)",
            ["reason"],
            registry=r,
        )
        self.waiting = Gauge(
            "hub_mqtt_waiting", "Requests waiting for a place at the models", registry=r
        )
        self.dedup_bytes = Gauge(
            "hub_mqtt_dedup_bytes",
            "Bytes held by the record of recent requests (answers plus per-entry overhead)",
            registry=r,
        )
        self.dedup_entries = Gauge(
            "hub_mqtt_dedup_entries", "Requests in the record of recent requests", registry=r
        )
        self.dedup_evicted = Counter(
            "hub_mqtt_dedup_evicted",
            "Entries dropped from the record of recent requests: ttl, bytes, entries",
            ["reason"],
            registry=r,
        )
        self.connected = Gauge(
            "hub_mqtt_connected", "1 while the bridge is connected to the broker", registry=r
        )
        self.in_flight = Gauge("hub_mqtt_in_flight", "MQTT requests being served", registry=r)
        self.duration = Histogram(
            "hub_mqtt_request_duration_seconds",
            "From receipt to published answer",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )


@dataclass(frozen=True, kw_only=True)
class _Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    response_topic: str | None
    correlation: bytes | None
    expiry_s: int | None
    received_s: float


class MqttBridge:
    def __init__(
        self,
        settings: MqttSettings,
        service: InferenceService,
        metrics: HubMetrics,
        *,
        on_status: Callable[[str, bytes], object] | None = None,
        retained_from: Callable[[], dict[str, bytes]] | None = None,
    ) -> None:
        """``on_status`` gets every device's retained status (topic, payload) on paho's thread.
        ``retained_from`` gives the retained messages to publish on each connect (read from the
        shared store then); without it, or when it fails, the last ones set are published."""
        self._settings = settings
        self._on_status = on_status
        self._retained_from = retained_from
        self._seen: dict[str, bytes] = {}
        self._service = service
        self._metrics = BridgeMetrics(metrics)
        evicted = self._metrics.dedup_evicted
        self._answers = RecentAnswers(
            max_bytes=settings.dedup_max_bytes,
            max_entries=settings.dedup_max_entries,
            ttl_s=settings.dedup_ttl_s,
            on_evict=lambda reason: evicted.labels(reason=reason).inc(),
        )
        self._metrics.dedup_bytes.set_function(lambda: self._answers.size_bytes)
        self._metrics.dedup_entries.set_function(lambda: len(self._answers))
        self._buckets = (
            DeviceBuckets(settings.device_rate_per_s, settings.device_burst)
            if settings.device_rate_per_s is not None
            else None
        )
        self._fair = FairQueue(settings.max_running, settings.device_max_waiting)
        self._metrics.waiting.set_function(lambda: self._fair.waiting)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = threading.Event()
        self._closing = False
        self._retained: dict[str, bytes] = {}
        self._retained_lock = threading.Lock()
        client_id = settings.client_id or f"hub-{socket.gethostname()}-{os.getpid()}"
        self._v5 = settings.protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else True,
            manual_ack=True,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            self._client.username_pw_set(settings.username, password)
        if settings.tls:
            self._client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                certfile=str(settings.cert_file) if settings.cert_file else None,
                keyfile=str(settings.key_file) if settings.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self._client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        self._client.max_inflight_messages_set(settings.max_in_flight)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        # Agents watch this retained status: online on every connect, offline from the Last
        # Will (the broker publishes it the moment the hub's connection dies) or a clean stop.
        self._hub_id = client_id
        self.status_topic = hub_status_topic(client_id)
        self._client.will_set(self.status_topic, self._hub_status(DeviceState.OFFLINE), 1, True)

    def _hub_status(self, state: DeviceState) -> bytes:
        return (
            HubStatus(hub_id=self._hub_id, state=state, timestamp_s=time.time())
            .model_dump_json(exclude_none=True)
            .encode("utf-8")
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Connect in the background; the bridge retries until the broker answers."""
        self._loop = asyncio.get_running_loop()
        host, port = self._settings.host_port()
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.ReceiveMaximum = self._settings.max_in_flight
            properties.SessionExpiryInterval = 0
            self._client.connect_async(
                host,
                port,
                keepalive=self._settings.keepalive_s,
                clean_start=True,
                properties=properties,
            )
        else:  # MQTT 3.1.1: no properties; replies go to the default topic, matched by id
            self._client.connect_async(host, port, keepalive=self._settings.keepalive_s)
        self._client.loop_start()
        logger.info("MQTT bridge connecting to %s:%d", host, port)

    async def stop(self, *, drain_timeout_s: float = 10.0) -> None:
        """Stop taking requests, let those being served answer, then disconnect."""
        self._closing = True
        if self._connected.is_set():
            self._client.unsubscribe(self._subscription())
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=drain_timeout_s)
        if self._connected.is_set():
            info = self._client.publish(
                self.status_topic, self._hub_status(DeviceState.OFFLINE), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, 2.0)
        self._client.disconnect()
        self._client.loop_stop()
        self._metrics.connected.set(0)

    def set_retained(self, topic: str, payload: bytes) -> bool:
        """Publish ``payload`` retained on ``topic`` now if connected, and again on every
        connect (the broker may have lost it). ``True`` when it went out now."""
        with self._retained_lock:
            self._retained[topic] = payload
        if not self._connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=1, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def retained(self, topic: str) -> bytes | None:
        """The last message seen on a fleet topic (the broker's retained one, or a newer one),
        when the bridge watches them (``retained_from`` given)."""
        with self._retained_lock:
            return self._seen.get(topic)

    def _subscription(self) -> str:
        if self._settings.shared:
            return shared_request_subscription(self._settings.share_group)
        return request_subscription()

    # -- paho's thread -------------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            logger.error("MQTT broker refused the connection: %s", reason)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(self._subscription(), qos=1)
        if self._on_status is not None:
            client.subscribe(STATUS_SUBSCRIPTION, qos=1)
        if self._retained_from is not None:
            client.subscribe(FLEET_MODELS_SUBSCRIPTION, qos=1)
            try:
                fresh = self._retained_from()
            except Exception as exc:
                logger.warning("retained messages not read again on connect: %s", exc)
            else:
                with self._retained_lock:
                    self._retained.update(fresh)
        with self._retained_lock:
            retained = list(self._retained.items())
        for topic, payload in retained:
            client.publish(topic, payload, qos=1, retain=True)
        client.publish(self.status_topic, self._hub_status(DeviceState.ONLINE), qos=1, retain=True)
        self._connected.set()
        self._metrics.connected.set(1)
        logger.info("MQTT bridge connected; subscribed to %s", self._subscription())

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connected.clear()
        self._metrics.connected.set(0)
        if not self._closing:
            logger.warning("MQTT bridge disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(_FLEET_PREFIX):
            with self._retained_lock:
                self._seen[msg.topic] = bytes(msg.payload)
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            return
        if self._on_status is not None and msg.topic.endswith(_STATUS_SUFFIX):
            try:
                self._on_status(msg.topic, bytes(msg.payload))
            except Exception:
                logger.exception("the device status on %s was not recorded", msg.topic)
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            return
        props = getattr(msg, "properties", None)
        incoming = _Incoming(
            topic=msg.topic,
            payload=bytes(msg.payload),
            mid=msg.mid,
            qos=msg.qos,
            response_topic=getattr(props, "ResponseTopic", None) or None,
            correlation=getattr(props, "CorrelationData", None),
            expiry_s=getattr(props, "MessageExpiryInterval", None),
            received_s=time.monotonic(),
        )
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._spawn, incoming)

    # -- the event loop --------------------------------------------------------------------------

    def _spawn(self, incoming: _Incoming) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, incoming: _Incoming) -> None:
        self._metrics.in_flight.inc()
        try:
            outcome = await self._serve(incoming)
            self._metrics.messages.labels(outcome=outcome).inc()
            self._metrics.duration.observe(time.monotonic() - incoming.received_s)
        except Exception:
            logger.exception("MQTT request on %s failed unexpectedly", incoming.topic)
            self._metrics.messages.labels(outcome="error").inc()
        finally:
            self._metrics.in_flight.dec()
            if incoming.qos > 0:
                self._client.ack(incoming.mid, incoming.qos)

    async def _serve(self, incoming: _Incoming) -> str:
        try:
            topic = parse_topic(incoming.topic)
            if topic.kind is not TopicKind.INFER_REQUEST or topic.device_id is None:
                raise TopicError(f"{incoming.topic!r} is not a request topic")
            reply_to = incoming.response_topic or infer_response_topic(topic.device_id)
            device_id = topic.device_id
        except TopicError as exc:
            if incoming.response_topic is None:
                logger.warning("dropped a message on %r: %s", incoming.topic, exc)
                return "malformed"
            self._publish(
                incoming, incoming.response_topic, encode_mqtt_error(str(exc), status=exc.status)
            )
            return "malformed"
        if not _may_answer_on(reply_to, device_id):
            # The hub may write every device's reply topic; a device may not borrow that.
            logger.warning("refused a Response Topic %r from device %r", reply_to, device_id)
            self._publish(
                incoming,
                infer_response_topic(device_id),
                encode_mqtt_error(
                    f"Response Topic {reply_to!r} belongs to another device or the fleet; "
                    f"use one under {TOPIC_PREFIX}/{device_id}/ or one outside {TOPIC_PREFIX}/",
                    status=403,
                ),
            )
            return "malformed"
        deadline_s = incoming.received_s + incoming.expiry_s if incoming.expiry_s else None
        if self._buckets is not None:
            wait_s = self._buckets.take(device_id, incoming.received_s)
            if wait_s is not None:
                self._refuse(incoming, reply_to, device_id, "rate", wait_s, deadline_s)
                return "rate_limited"
        try:
            decoded = decode_mqtt_request(incoming.payload, limits=self._service.limits)
        except ProtocolError as exc:
            self._publish(
                incoming, reply_to, encode_mqtt_error(str(exc), status=exc.status), deadline_s
            )
            return "malformed"
        request = decoded.request
        if not request.id:
            payload, outcome = await self._run(incoming, device_id, decoded, deadline_s)
            if payload is not None:
                self._publish(incoming, reply_to, payload, deadline_s)
            return outcome if outcome != "final_error" else "error"
        key = (device_id, request.id, digest(incoming.payload))
        first, entry = self._answers.claim(key)
        if not first:
            if entry.answer is not None:
                self._publish(incoming, reply_to, entry.answer, deadline_s)
                return "duplicate"
            assert entry.running is not None
            try:
                payload = await asyncio.shield(entry.running)
            except RequestTimeoutError:
                return "expired"
            if deadline_s is not None and time.monotonic() >= deadline_s:
                return "expired"
            self._publish(incoming, reply_to, payload, deadline_s)
            return "joined"
        try:
            payload, outcome = await self._run(incoming, device_id, decoded, deadline_s)
        except BaseException as exc:
            self._answers.abandon(key, entry, RequestTimeoutError(f"the first run failed: {exc}"))
            raise
        if payload is None:
            self._answers.abandon(key, entry, RequestTimeoutError("the request expired"))
            return outcome
        self._answers.settle(key, entry, payload, final=outcome in ("answered", "final_error"))
        if deadline_s is not None and time.monotonic() >= deadline_s:
            return "expired"
        self._publish(incoming, reply_to, payload, deadline_s)
        return outcome if outcome != "final_error" else "error"

    async def _run(
        self,
        incoming: _Incoming,
        device_id: str,
        decoded: DecodedRequest,
        deadline_s: float | None,
    ) -> tuple[bytes | None, str]:
        """Run one request in its device's turn: ``(answer, "answered")``, ``(error,
        "final_error")`` for an error a retry would get again, ``(error, "error")`` for one it
        may not, ``(error, "rate_limited")``, or ``(None, "expired")``."""
        request = decoded.request
        if self._fair.full_for(device_id):
            self._metrics.rate_limited.labels(reason="waiting").inc()
            hint = 1 / self._buckets.rate_per_s if self._buckets is not None else 0.1
            return _too_many(
                f"device {device_id!r} has {self._settings.device_max_waiting} requests "
                "waiting for the models; retry later",
                request.id,
                hint,
            ), "rate_limited"
        try:
            await self._fair.acquire(
                device_id, deadline_s - time.monotonic() if deadline_s is not None else None
            )
        except TimeoutError:
            return None, "expired"
        try:
            if deadline_s is not None and time.monotonic() >= deadline_s:
                raise RequestTimeoutError("the request expired before it ran")
            timeout_s = deadline_s - time.monotonic() if deadline_s is not None else None
            model = request.model_name  # type: ignore[attr-defined]
            version = request.model_version  # type: ignore[attr-defined]
            loaded, result = await self._service.run(
                model, version, decoded, timeout_s=timeout_s, device_id=device_id
            )
            framed = content_type_of(incoming.payload) != "application/json"
            payload = encode_mqtt_response(
                result,
                model_name=model,
                model_version=str(loaded.version),
                id=request.id,
                parameters={"served_by": SERVED_BY},
                binary=_binary_choice(request, result, framed=framed),
            )
            return payload, "answered"
        except RequestTimeoutError:
            return None, "expired"
        except HubError as exc:
            payload = encode_mqtt_error(exc.message, id=request.id, status=exc.status)
            return payload, "final_error" if exc.status in FINAL_ERROR_STATUSES else "error"
        finally:
            self._fair.release()

    def _refuse(
        self,
        incoming: _Incoming,
        reply_to: str,
        device_id: str,
        reason: str,
        wait_s: float,
        deadline_s: float | None,
    ) -> None:
        """Answer 429 before decoding: the id is read from the JSON header alone."""
        self._metrics.rate_limited.labels(reason=reason).inc()
        message = (
            f"device {device_id!r} is over its rate limit "
            f"({self._settings.device_rate_per_s:g} requests/s, burst "
            f"{self._settings.device_burst}); retry after {wait_s:.3f} s"
        )
        self._publish(
            incoming, reply_to, _too_many(message, _peek_id(incoming.payload), wait_s), deadline_s
        )

    def _publish(
        self, incoming: _Incoming, topic: str, payload: bytes, deadline_s: float | None = None
    ) -> None:
        props = None
        if self._v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if incoming.correlation is not None:
                props.CorrelationData = incoming.correlation
            props.ContentType = content_type_of(payload)
            if deadline_s is not None:
                props.MessageExpiryInterval = max(1, math.ceil(deadline_s - time.monotonic()))
        try:
            self._client.publish(topic, payload, qos=1, properties=props)
        except ValueError as exc:  # a response topic with wildcards, or an empty one
            logger.warning("cannot answer on %r: %s", topic, exc)


def _too_many(message: str, request_id: str | None, retry_after_s: float) -> bytes:
    return encode_mqtt_error(message, id=request_id, status=429, retry_after_s=retry_after_s)


def _peek_id(payload: bytes) -> str | None:
    """The request id, from the JSON header only; ``None`` when there is none to read."""
    try:
        header, _ = split_frame(payload)
        value = json.loads(bytes(header)).get("id")
    except (ProtocolError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _may_answer_on(topic: str, device_id: str) -> bool:
    """A Response Topic inside the protocol's namespace must be the requesting device's own."""
    return not topic.startswith(f"{TOPIC_PREFIX}/") or topic.startswith(
        f"{TOPIC_PREFIX}/{device_id}/"
    )


def _binary_choice(
    request: Any, result: dict[str, Any], *, framed: bool
) -> BinaryChoice | dict[str, bool]:
    """What the caller asked for; without a request, framed callers get binary where it pays."""
    asked = bool(request.parameters and BINARY_DATA_OUTPUT in request.parameters) or any(
        out.parameters and BINARY_DATA in out.parameters for out in request.outputs or ()
    )
    if framed and not asked:
        return "auto"
    return {name: wants_binary_output(request, name) for name in result}
