"""Errors raised by the wire contract.

Every failure to read or build a message raises one specific subclass of
:class:`ProtocolError`, with a message that says what was wrong and ``location`` saying
where (``"inputs[0] 'x'"``, ``"header"``, ``"topic"``...). ``status`` is the HTTP status a
server should answer with, so a server maps the whole tree with one handler.

    ProtocolError                    (ValueError; status 400)
     ├── MessageError                malformed JSON, or a message that fails its schema
     ├── DatatypeError               unknown datatype, or a dtype with no wire datatype
     ├── ShapeError                  negative or non-integer dimension, size/byte-count mismatch
     ├── DataError                   wrong element types, ragged nested data
     │    └── ValueOverflowError     a value that does not fit the tensor's datatype
     ├── BinaryFormatError           truncated frame, bad magic, header length past the end
     ├── LimitExceededError          a configured limit (elements, dimensions, BYTES element)
     │    └── PayloadTooLargeError   the payload or header byte limit (status 413)
     └── TopicError                  a topic outside the v1 families
          └── DeviceIdError          a device id or device class the rules reject
"""

from __future__ import annotations

__all__ = [
    "BinaryFormatError",
    "DataError",
    "DatatypeError",
    "DeviceIdError",
    "LimitExceededError",
    "MessageError",
    "PayloadTooLargeError",
    "ProtocolError",
    "ShapeError",
    "TopicError",
    "ValueOverflowError",
]


class ProtocolError(ValueError):
    """Root of every wire-contract error. ``str(err)`` is safe to return to a caller."""

    status: int = 400

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class MessageError(ProtocolError):
    """The payload is not valid JSON, or does not match the message schema."""


class DatatypeError(ProtocolError):
    """A datatype name outside the Open Inference Protocol's list, or a numpy dtype without one."""


class ShapeError(ProtocolError):
    """A shape that cannot be, or that disagrees with the data or the byte count."""


class DataError(ProtocolError):
    """Tensor data whose elements or nesting do not fit the declared datatype and shape."""


class ValueOverflowError(DataError):
    """A value outside the range of the tensor's datatype (300 for UINT8, 1e10 for FP16)."""


class BinaryFormatError(ProtocolError):
    """A binary body or frame that is cut short, has trailing bytes, or a bad header length."""


class LimitExceededError(ProtocolError):
    """A configured limit was passed (tensor elements, dimensions, BYTES element length...)."""


class PayloadTooLargeError(LimitExceededError):
    """The whole payload, or its JSON header, is over the configured byte limit."""

    status = 413


class TopicError(ProtocolError):
    """An MQTT topic that is not one of the v1 topic families."""


class DeviceIdError(TopicError):
    """A device id or device class that breaks the naming rules."""
