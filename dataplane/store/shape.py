"""Pass 1 of checking a document: its shape, following the protobuf descriptors of
dataplane/proto/config.proto. Known field names (camelCase), types, and the per-field ranges and
enumerations below; what spans fields is pass 2 (rules.py).

shape(value, descriptor, path) returns a checked copy of a mapping, or raises problems.Invalid
for the first problem."""
from google.protobuf.descriptor import FieldDescriptor

from dataplane.store.problems import Invalid, describe, short, sub, unknown_field

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
RETRY_CONDITIONS = ("connect-failure", "reset", "5xx", "502", "503", "504", "retriable-4xx")
LOAD_BALANCERS = ("round_robin", "weighted", "least_request", "ring_hash")

_UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1
# Per-field limits, checked wherever the field is given (omitted fields get defaults later).
# Keyed by "Message.field"; unlisted uint32 fields may hold any uint32.
_RANGES = {
    "Metadata.revision": (0, _INT64_MAX),
    "ServicePort.port": (1, 65535),
    "ServicePort.target_port": (1, 65535),
    "StaticEndpoint.port": (1, 65535),
    "StaticEndpoint.weight": (1, 1000),
    "HealthCheck.interval_ms": (100, _UINT32_MAX),
    "HealthCheck.timeout_ms": (1, _UINT32_MAX),
    "HealthCheck.healthy_threshold": (1, _UINT32_MAX),
    "HealthCheck.unhealthy_threshold": (1, _UINT32_MAX),
    "EndpointSpec.port": (1, 65535),
    "EndpointSpec.weight": (1, 1000),
    "RouteRule.timeout_ms": (1, _UINT32_MAX),
    "WeightedTarget.weight": (0, 100),
    "RetryPolicy.attempts": (1, 10),
    "RetryPolicy.per_try_timeout_ms": (1, _UINT32_MAX),
    "Fault.delay_ms": (1, _UINT32_MAX),
    "Fault.delay_percent": (0, 100),
    "Fault.abort_status": (200, 599),
    "Fault.abort_percent": (0, 100),
    "TrafficPolicySpec.connect_timeout_ms": (1, _UINT32_MAX),
    "TrafficPolicySpec.idle_timeout_ms": (1, _UINT32_MAX),
    "TrafficPolicySpec.max_connections": (1, _UINT32_MAX),
    "TrafficPolicySpec.max_pending": (0, _UINT32_MAX),
    "TrafficPolicySpec.retry_attempts": (0, 10),
    "OutlierDetection.consecutive_failures": (1, _UINT32_MAX),
    "OutlierDetection.base_ejection_ms": (1, _UINT32_MAX),
    "OutlierDetection.max_ejection_percent": (0, 100),
    "RateLimit.tokens_per_second": (1, _UINT32_MAX),
    "RateLimit.burst": (1, _UINT32_MAX),
    "MeshSettingsSpec.default_connect_timeout_ms": (1, _UINT32_MAX),
}
_CHOICES = {
    "ServicePort.protocol": ("tcp", "http"),
    "ServiceSpec.ip_families": ("IPv4", "IPv6"),
    "HealthCheck.type": ("tcp", "http"),
    "EndpointSpec.health": ("healthy", "unhealthy", "unknown"),
    "RouteMatch.method": HTTP_METHODS,
    "TrafficPolicySpec.load_balancer": LOAD_BALANCERS,
}
# Fields where an explicit 0 differs from omission (which takes a default): to_dict prints them
# even when 0, so that `get -o yaml` output applies again unchanged.
ZERO_KEPT = {"OutlierDetection.max_ejection_percent", "TrafficPolicySpec.retry_attempts"}
# String fields whose YAML may be a bare integer (`on: [5xx, 503]`); stored as text.
_INT_AS_STRING = {"RetryPolicy.on"}


def is_map(field) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def field_id(field) -> str:
    return f"{field.containing_type.name}.{field.name}"


def shape(value, desc, path) -> dict:
    """A checked copy of the mapping `value` for message type `desc`."""
    if not isinstance(value, dict):
        raise Invalid(path, f"expected a mapping, got {describe(value)}")
    fields = {f.json_name: f for f in desc.fields}
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise Invalid(path, f"field names must be strings, got {describe(key)}")
        field = fields.get(key)
        if field is None:
            raise unknown_field(sub(path, key), key, list(fields))
        out[key] = _shape_field(item, field, sub(path, key))
    return out


def _shape_field(value, field, path):
    if is_map(field):
        if not isinstance(value, dict):
            raise Invalid(path, f"expected a mapping, got {describe(value)}")
        value_field = field.message_type.fields_by_name["value"]
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise Invalid(path, f"keys must be strings, got {describe(k)}")
            out[k] = _shape_single(v, value_field, sub(path, k))
        return out
    if field.is_repeated:
        if not isinstance(value, list):
            raise Invalid(path, f"expected a list, got {describe(value)}")
        return [_shape_single(v, field, f"{path}[{i}]") for i, v in enumerate(value)]
    return _shape_single(value, field, path)


def _shape_single(value, field, path):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return shape(value, field.message_type, path)
    fid = field_id(field)
    if field.type == FieldDescriptor.TYPE_STRING:
        if fid in _INT_AS_STRING and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise Invalid(path, f"expected a string, got {describe(value)}")
        choices = _CHOICES.get(fid)
        if choices and value not in choices:
            raise Invalid(path, f"{short(value)} is not one of {', '.join(choices)}")
        return value
    if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_INT64):
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(path, f"expected an integer, got {describe(value)}")
        lo, hi = _RANGES.get(fid, (0, _UINT32_MAX if field.type == FieldDescriptor.TYPE_UINT32 else _INT64_MAX))
        if not lo <= value <= hi:
            if value < lo and lo > 0 and hi in (_UINT32_MAX, _INT64_MAX):
                raise Invalid(path, f"must be at least {lo}, got {value}")
            raise Invalid(path, f"{value} is out of range {lo}-{hi}")
        return value
    if field.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise Invalid(path, f"expected true or false, got {describe(value)}")
        return value
    raise AssertionError(f"config.proto field type {field.type} of {fid} is not handled")
