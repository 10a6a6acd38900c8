"""The device daemon: local LiteRT inference with fallback to the cloud over MQTT.

    config.py      AgentConfig: YAML + HYBRID_AGENT_* environment, validated when built
    addresses.py   host:port and unix:/path listen addresses
    runtime/       interpreter backends (ai_edge_litert, tflite_runtime, tensorflow.lite)
    models.py      a loaded model: signature, input checks, one interpreter per worker
    probe.py       loads a model in a child process first, so a crashing file fails alone
    loader.py      ModelLoader: runtime, probe and timeouts, for the registry and the updater
    registry.py    configured models and their state (loading, ready, failed + reason)
    confidence.py  confidence scores of an answer (max probability, Sedna's entropy score)
    reply.py       ReplyFormat: how an app wants its answer (binary, classification)
    router.py      where a request is answered: the fallback policy per model (InferCall in,
                   RoutedResult or QueuedResult out)
    cloud/         the MQTT link to the hubs, circuit breaker, on-disk outbox, telemetry
    updater/       signed model updates: verify, download, smoke test, swap, roll back
    api/           the local Open Inference Protocol v2 HTTP API (standard library server)
    metrics.py     Prometheus metrics in the agent's own registry
    lifecycle.py   the request gate that drains in-flight requests on SIGTERM
    memory.py      malloc_trim after a large request, so resident memory goes back down
    systemd.py     sd_notify (READY=1, STOPPING=1) for a Type=notify unit
    agent.py       Agent: start/stop, run(config), check(config)
    client.py      EdgeClient: a small keep-alive HTTP client for apps on the device
    cli.py         the edge-agent command
    errors.py      AgentError and its subclasses, each with its HTTP status and metric label

Importing this package imports no interpreter; the runtime is chosen when the agent starts.
The wire's rules (names, classification, codecs) come from :mod:`protocols`, the only package of
ours the agent imports.
"""

from .errors import (
    AgentError,
    ClientError,
    CloudRequestError,
    CloudTimeoutError,
    CloudUnavailableError,
    ConfigError,
    ConnectError,
    HttpRequestError,
    InferenceError,
    InputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    OutboxFullError,
    QueuedError,
    ResponseError,
    RuntimeUnavailableError,
    UnavailableError,
)

__all__ = [
    "AgentError",
    "ClientError",
    "CloudRequestError",
    "CloudTimeoutError",
    "CloudUnavailableError",
    "ConfigError",
    "ConnectError",
    "HttpRequestError",
    "InferenceError",
    "InputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "OutboxFullError",
    "QueuedError",
    "ResponseError",
    "RuntimeUnavailableError",
    "UnavailableError",
]
