"""A loaded version's configuration in Triton's model configuration schema.

HTTP answers it as JSON (``/v2/models/{m}/config``), gRPC as the ``ModelConfig`` message parsed
from the same dictionary, so both transports describe a model alike.
"""

from __future__ import annotations

from typing import Any

from protocols import Datatype

from .model_config import TensorConfig
from .repository import LoadedVersion

__all__ = ["triton_config"]

_TRITON_TYPES = {dt: f"TYPE_{'STRING' if dt is Datatype.BYTES else dt.value}" for dt in Datatype}


def triton_config(loaded: LoadedVersion) -> dict[str, Any]:
    config = loaded.config

    def tensor(t: TensorConfig) -> dict[str, Any]:
        return {"name": t.name, "data_type": _TRITON_TYPES[t.datatype], "dims": list(t.dims)}

    out: dict[str, Any] = {
        "name": loaded.model,
        "platform": loaded.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": [tensor(t) for t in loaded.inputs],
        "output": [tensor(t) for t in loaded.outputs],
        "instance_group": [{"count": config.instance_count, "kind": "KIND_AUTO"}],
        "runtime": loaded.backend.name,
    }
    policy = config.version_policy
    if policy.all:
        out["version_policy"] = {"all": {}}
    elif policy.specific is not None:
        out["version_policy"] = {"specific": {"versions": policy.specific}}
    else:
        out["version_policy"] = {"latest": {"num_versions": policy.latest or 1}}
    if config.dynamic_batching is not None:
        out["dynamic_batching"] = {
            "preferred_batch_size": config.dynamic_batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_us,
            "default_queue_policy": {
                "max_queue_size": config.dynamic_batching.max_queue_size,
                "default_timeout_microseconds": config.dynamic_batching.default_timeout_us,
            },
        }
    if config.response_cache.enabled:
        out["response_cache"] = {"enable": True}
    return out
