"""Hypothesis strategies that build any matrec.v1 request message from its descriptor: every
field filled with values of its type (odd strings, extreme and non-finite numbers, unknown enum
values, nested messages, Structs of JSON values), for fuzzing the coordinator's RPCs."""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MAX_DEPTH = 3

TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "job-", "study-nope", "../../etc/passwd", "tok-x", "a" * 300, "\x00"]),
)
JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True), st.integers(-(2**53), 2**53), TEXT
)
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[field.type]
    return st.one_of(st.integers(-3, 20).filter(lambda v: low <= v <= high), st.integers(low, high))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in INT_RANGES:
        return _integers(field)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 32 if field.type == FieldDescriptor.TYPE_FLOAT else 64
        return st.floats(width=width)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_STRING:
        return TEXT
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 50))
    raise TypeError(f"no strategy for field {field.full_name}")


@st.composite
def _fill(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Struct":
        message.update(draw(st.dictionaries(st.text(max_size=20), JSON, max_size=6)))
        return message
    if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        message.seconds = draw(st.integers(-(10**10), 10**10))
        message.nanos = draw(st.integers(0, 999_999_999))
        return message
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                continue
            if field.message_type.GetOptions().map_entry:
                key_field, value_field = field.message_type.fields
                keys = draw(st.lists(_scalar(key_field), max_size=3))
                target = getattr(message, field.name)
                for key in keys:
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        target[key].CopyFrom(draw(_fill(value_field.message_type, depth + 1)))
                    else:
                        target[key] = draw(_scalar(value_field))
                continue
            values = draw(
                st.lists(_fill(field.message_type, depth + 1), max_size=3)
                if repeated
                else _fill(field.message_type, depth + 1).map(lambda m: [m])
            )
            if repeated:
                getattr(message, field.name).extend(values)
            else:
                getattr(message, field.name).CopyFrom(values[0])
        elif repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=4)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def messages(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    """Any message of this type, fields set at random (each field half of the time)."""
    return _fill(descriptor, 0)
