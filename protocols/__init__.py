"""The wire contract of hybrid-inference, shared by every process on every side of every wire.

- :mod:`protocols.oip`: Open Inference Protocol v2 messages (pydantic).
- :mod:`protocols.codec`: tensors to and from JSON and Triton's binary tensor extension.
- :mod:`protocols.envelope`: MQTT payloads (plain JSON or the ``HIB1`` frame).
- :mod:`protocols.topics`: MQTT topic builders and parsers, device id rules.
- :mod:`protocols.messages`: device status and telemetry.
- :mod:`protocols.errors`: one error per kind of bad input; :mod:`protocols.limits`: size limits.

This package does no I/O and imports nothing else of the project.
"""

from .codec import (
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    HEADER_LENGTH_HEADER,
    DecodedRequest,
    DecodedResponse,
    EncodedBody,
    decode_request,
    decode_response,
    deserialize_bytes_tensor,
    encode_request,
    encode_response,
    parse_header_length,
    serialize_bytes_tensor,
    wants_binary_output,
)
from .datatypes import Datatype, datatype_of, parse_datatype
from .envelope import (
    CONTENT_TYPE_FRAME,
    CONTENT_TYPE_JSON,
    FRAME_MAGIC,
    MqttErrorResponse,
    MqttInferenceRequest,
    content_type_of,
    decode_mqtt_request,
    decode_mqtt_response,
    encode_mqtt_error,
    encode_mqtt_request,
    encode_mqtt_response,
)
from .errors import (
    BinaryFormatError,
    DataError,
    DatatypeError,
    DeviceIdError,
    LimitExceededError,
    MessageError,
    PayloadTooLargeError,
    ProtocolError,
    ShapeError,
    TopicError,
    ValueOverflowError,
)
from .limits import DEFAULT_LIMITS, Limits
from .messages import DeviceState, DeviceStatus, Telemetry
from .oip import (
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from .topics import (
    Topic,
    TopicKind,
    fleet_models_topic,
    infer_request_topic,
    infer_response_topic,
    parse_topic,
    request_subscription,
    shared_request_subscription,
    status_topic,
    telemetry_topic,
    validate_device_id,
)

PROTOCOL_VERSION = "v1"

__all__ = [
    "BINARY_DATA",
    "BINARY_DATA_OUTPUT",
    "BINARY_DATA_SIZE",
    "CONTENT_TYPE_FRAME",
    "CONTENT_TYPE_JSON",
    "DEFAULT_LIMITS",
    "FRAME_MAGIC",
    "HEADER_LENGTH_HEADER",
    "PROTOCOL_VERSION",
    "BinaryFormatError",
    "DataError",
    "Datatype",
    "DatatypeError",
    "DecodedRequest",
    "DecodedResponse",
    "DeviceIdError",
    "DeviceState",
    "DeviceStatus",
    "EncodedBody",
    "ErrorResponse",
    "InferenceRequest",
    "InferenceResponse",
    "LimitExceededError",
    "Limits",
    "MessageError",
    "ModelMetadata",
    "MqttErrorResponse",
    "MqttInferenceRequest",
    "PayloadTooLargeError",
    "ProtocolError",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadata",
    "ShapeError",
    "Telemetry",
    "TensorMetadata",
    "Topic",
    "TopicError",
    "TopicKind",
    "ValueOverflowError",
    "content_type_of",
    "datatype_of",
    "decode_mqtt_request",
    "decode_mqtt_response",
    "decode_request",
    "decode_response",
    "deserialize_bytes_tensor",
    "encode_mqtt_error",
    "encode_mqtt_request",
    "encode_mqtt_response",
    "encode_request",
    "encode_response",
    "fleet_models_topic",
    "infer_request_topic",
    "infer_response_topic",
    "parse_datatype",
    "parse_header_length",
    "parse_topic",
    "request_subscription",
    "serialize_bytes_tensor",
    "shared_request_subscription",
    "status_topic",
    "telemetry_topic",
    "validate_device_id",
    "wants_binary_output",
]
