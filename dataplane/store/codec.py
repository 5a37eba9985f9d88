"""The codec boundary: config.proto messages to their typed mirrors (snapshot.py) and back.

to_typed(message) and to_message(mirror) are exact inverses for every message of config.proto:
fields are matched by name, an absent message field is None, a repeated field a tuple, a map a
snapshot.Frozen. So to_message(to_typed(m)) serializes to the same bytes as m, and an object read
from the store and written back unchanged is not rewritten. Only the store layer (registry,
config, schema) calls this; everything past it reads the mirrors.
"""
from google.protobuf.descriptor import FieldDescriptor

from dataplane.proto import config_pb2 as pb
from dataplane.store import snapshot as snap

_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def _is_map(fd) -> bool:
    return fd.type == _MESSAGE and fd.message_type.GetOptions().map_entry


def _map_of_messages(fd) -> bool:
    return fd.message_type.fields_by_name["value"].type == _MESSAGE


def to_typed(message):
    """The frozen mirror of a config.proto message (snapshot.MIRRORS[its type name])."""
    values = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if _is_map(fd):
            nested = _map_of_messages(fd)
            values[fd.name] = snap.Frozen({k: to_typed(value[k]) if nested else value[k] for k in value})
        elif fd.is_repeated:
            values[fd.name] = tuple(to_typed(v) if fd.type == _MESSAGE else v for v in value)
        elif fd.type == _MESSAGE:
            values[fd.name] = to_typed(value) if message.HasField(fd.name) else None
        else:
            values[fd.name] = value
    return snap.MIRRORS[message.DESCRIPTOR.name](**values)


def to_message(obj):
    """The config.proto message a mirror stands for (the message type of the same name)."""
    message = getattr(pb, type(obj).__name__)()
    _fill(message, obj)
    return message


def _fill(message, obj) -> None:
    for fd in message.DESCRIPTOR.fields:
        value = getattr(obj, fd.name)
        target = getattr(message, fd.name) if fd.type == _MESSAGE else None
        if _is_map(fd):
            nested = _map_of_messages(fd)
            for k, v in value.items():
                if nested:
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif fd.is_repeated:
            if fd.type == _MESSAGE:
                for v in value:
                    _fill(target.add(), v)
            else:
                getattr(message, fd.name).extend(value)
        elif fd.type == _MESSAGE:
            if value is not None:
                target.SetInParent()  # present even when every field is zero: `match: {}`
                _fill(target, value)
        else:
            setattr(message, fd.name, value)
