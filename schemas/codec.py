"""The one codec between messages and stream entries.

An entry is a map of string fields. Scalar fields travel flat, as text a person can type with
`redis-cli XADD`; bytes, lists and maps travel together in one msgpack field, `payload`. Both
forms go through the same pydantic model, so a hand-typed entry and a program's entry are checked
by the same rules. Every failure is a `MessageError` naming the field and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgpack
from pydantic import TypeAdapter, ValidationError

from flowact.schemas.messages import AnyMessage, Message
from flowact.schemas.streams import ACCEPTS, DEFAULT_TYPE, parse_stream

PAYLOAD = "payload"
_ADAPTER: TypeAdapter[Message] = TypeAdapter(AnyMessage)


class MessageError(ValueError):
    """An entry that is not a valid message; `field` is None when no single field is to blame."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def encode(message: Message) -> dict[str, bytes]:
    """Fields for a stream entry; unset optional fields are left out."""
    flat: dict[str, bytes] = {}
    packed: dict[str, object] = {}
    for name, value in message.model_dump(exclude_none=True).items():
        if isinstance(value, bool):
            flat[name] = b"true" if value else b"false"
        elif isinstance(value, (str, int, float)):
            flat[name] = str(value).encode()
        else:
            packed[name] = value
    if packed:
        flat[PAYLOAD] = msgpack.packb(packed, use_bin_type=True)
    return flat


def decode(fields: Mapping[str | bytes, str | bytes], stream: str | None = None) -> Message:
    """The message in an entry's fields. With `stream`, its type must be one the stream carries."""
    kind = parse_stream(stream)[1] if stream is not None else None
    data = _merge(fields)
    if "type" not in data and kind in DEFAULT_TYPE:
        data["type"] = DEFAULT_TYPE[kind]
    declared = data.get("type")
    if kind is not None and declared is not None and declared not in ACCEPTS[kind]:
        allowed = ", ".join(sorted(ACCEPTS[kind]))
        raise MessageError("type", f"{declared!r} does not belong on a {kind} stream ({allowed})")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise _explain(err) from None


def _merge(fields: Mapping[str | bytes, str | bytes]) -> dict[str, object]:
    data: dict[str, object] = {}
    packed: object = {}
    for raw_key, raw_value in fields.items():
        key = _text(raw_key, "field name")
        if key == PAYLOAD:
            packed = _unpack(raw_value)
        else:
            data[key] = _text(raw_value, key)
    if not isinstance(packed, dict):
        raise MessageError(PAYLOAD, "msgpack payload is not a map of field names to values")
    for key, value in packed.items():
        if not isinstance(key, str):
            raise MessageError(PAYLOAD, f"payload key {key!r} is not a string")
        if key in data:
            raise MessageError(key, "given twice: as a flat field and inside the payload")
        data[key] = value
    return data


def _text(value: str | bytes, field: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError(field, "is not UTF-8 text; binary data goes in the payload") from None


def _unpack(value: str | bytes) -> object:
    raw = value.encode() if isinstance(value, str) else value
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as err:
        raise MessageError(PAYLOAD, f"is not valid msgpack ({type(err).__name__})") from None


def _explain(err: ValidationError) -> MessageError:
    """The first error, its location without the union's tag, in words a person can act on."""
    errors = err.errors(include_url=False)
    # An unknown field is most often a typo of the field reported missing: name it first.
    first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    loc = [str(part) for part in first["loc"]]
    if first["type"] == "union_tag_invalid":
        return MessageError("type", f"unknown message type; {first['msg']}")
    if first["type"] == "union_tag_not_found":
        return MessageError("type", "missing: this stream needs a type field")
    field = ".".join(loc[1:]) or None
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        reason = "unknown field"
    elif first["type"] == "missing":
        reason = "required field is missing"
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more problem(s))"
    return MessageError(field, reason)
