"""The declarative configuration: documents users `glasswing apply`, their validation, and
their conversion to and from protobuf (dataplane/proto/config.proto), YAML and JSON.

A document looks like a Kubernetes object:

    apiVersion: glasswing.dev/v1
    kind: Service                 # Service, Endpoint, Route, TrafficPolicy, MeshSettings
    metadata: {name: orders, namespace: shop, labels: {team: checkout}}
    spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: orders}}

Field names are camelCase (the proto3 JSON names of the proto's snake_case fields). Validation is
strict: an unknown field, a wrong type or a bad value anywhere refuses the document with a
ConfigError of one line, `FILE: document N: FIELD.PATH: REASON`. A valid document becomes a
protobuf message with its defaults filled in (namespace "default", targetPort = port, weights 1, health "unknown", loadBalancer "round_robin", health check and outlier
detection timings, rate limit burst, upstream DNS port 53, fault abortStatus 503), so readers never need the defaults. One field
keeps "" on purpose: ServicePort.protocol omitted means undeclared (sniffed per connection),
which differs from an explicit "tcp" (opaque, never sniffed).

Checking happens in two passes over a copy of the document: the first follows the protobuf
descriptors (known fields, types, per-field ranges and enumerations); the second applies the
rules that span fields (required fields, mutual exclusion, sums, cross-field limits) and fills
the defaults. json_format.ParseDict then builds the message from the checked copy.

YAML is read with YAML 1.2 scalars: only true/false are booleans (so `on:` in a retry policy
stays a key and `yes` stays a string) and dates stay strings. Duplicate keys are refused.
"""
import ipaddress
import json
import os
import re
import sys
from dataclasses import dataclass

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from dataplane.store import kinds, names
from dataplane.errors import GlasswingError
from dataplane.proto import config_pb2 as pb
from dataplane.settings import POD_RANGE

API_VERSION = "glasswing.dev/v1"
KINDS = {name: kind.message for name, kind in kinds.KINDS.items()}  # kind name -> message class
MESH_SETTINGS_NAME = kinds.MESH_SETTINGS_NAME
DEFAULT_NAMESPACE = kinds.DEFAULT_NAMESPACE
KEY_PREFIX = kinds.KEY_PREFIX
STDIN_NAME = "<stdin>"  # how documents read from `-f -` are named in errors
EXTENSIONS = (".yaml", ".yml", ".json")

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
RETRY_CONDITIONS = ("connect-failure", "reset", "5xx", "502", "503", "504", "retriable-4xx")
LOAD_BALANCERS = ("round_robin", "weighted", "least_request", "ring_hash")

_UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1
_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec")

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
    "HealthCheck.type": ("tcp", "http"),
    "EndpointSpec.health": ("healthy", "unhealthy", "unknown"),
    "RouteMatch.method": HTTP_METHODS,
    "TrafficPolicySpec.load_balancer": LOAD_BALANCERS,
}
# Fields where an explicit 0 differs from omission (which takes a default): to_dict prints them
# even when 0, so that `get -o yaml` output applies again unchanged.
_ZERO_KEPT = {"OutlierDetection.max_ejection_percent", "TrafficPolicySpec.retry_attempts"}
# String fields whose YAML may be a bare integer (`on: [5xx, 503]`); stored as text.
_INT_AS_STRING = {"RetryPolicy.on"}

_LABEL_RULE = ("use at most 63 letters, digits, '-', '_', '.' and '/', "
               "starting and ending with a letter or digit")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_HOST = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS_CODE = re.compile(r"[1-5][0-9][0-9]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class ConfigError(GlasswingError):
    """An invalid configuration document or source: `FILE: document N: FIELD.PATH: REASON`.

    file, index (1-based document number within file), path (dotted field path) and reason are
    kept as attributes; any of the first three may be None when they do not apply."""

    def __init__(self, reason: str, file: str = None, index: int = None, path: str = None):
        self.file, self.index, self.path, self.reason = file, index, path, reason
        parts = [str(file)] if file is not None else []
        if index is not None:
            parts.append(f"document {index}")
        if path:
            parts.append(path)
        parts.append(reason)
        super().__init__(": ".join(parts))


class _Invalid(Exception):
    """A problem at a field path, before the file and document number are known."""

    def __init__(self, path, reason):
        super().__init__(reason)
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Document:
    file: str
    index: int  # 1-based, counting every document of the file (empty ones too)
    kind: str
    message: Message
    raw: dict  # the document as parsed, before validation and defaults

    @property
    def name(self) -> str:
        return self.message.metadata.name

    @property
    def namespace(self) -> str:
        return self.message.metadata.namespace

    @property
    def key(self) -> str:
        return key_for(self.kind, self.message)


# ---- paths and descriptions -----------------------------------------------------------------

def _sub(path, key) -> str:
    key = str(key)
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path or ''}[{json.dumps(key)}]"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {_short(value)}"


def _unknown_field(path, key, known) -> _Invalid:
    squashed = key.replace("_", "").replace("-", "").lower()
    hint = next((k for k in known if k.lower() == squashed), None)
    if hint:
        return _Invalid(path, f"unknown field (did you mean {hint}?)")
    return _Invalid(path, f"unknown field (expected one of {', '.join(known)})")


# ---- pass 1: shape, following the descriptors -----------------------------------------------

def _is_map(field) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _field_id(field) -> str:
    return f"{field.containing_type.name}.{field.name}"


def _shape(value, desc, path) -> dict:
    """A checked copy of the mapping `value` for message type `desc`."""
    if not isinstance(value, dict):
        raise _Invalid(path, f"expected a mapping, got {_describe(value)}")
    fields = {f.json_name: f for f in desc.fields}
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _Invalid(path, f"field names must be strings, got {_describe(key)}")
        field = fields.get(key)
        if field is None:
            raise _unknown_field(_sub(path, key), key, list(fields))
        out[key] = _shape_field(item, field, _sub(path, key))
    return out


def _shape_field(value, field, path):
    if _is_map(field):
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected a mapping, got {_describe(value)}")
        value_field = field.message_type.fields_by_name["value"]
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Invalid(path, f"keys must be strings, got {_describe(k)}")
            out[k] = _shape_single(v, value_field, _sub(path, k))
        return out
    if field.is_repeated:
        if not isinstance(value, list):
            raise _Invalid(path, f"expected a list, got {_describe(value)}")
        return [_shape_single(v, field, f"{path}[{i}]") for i, v in enumerate(value)]
    return _shape_single(value, field, path)


def _shape_single(value, field, path):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _shape(value, field.message_type, path)
    fid = _field_id(field)
    if field.type == FieldDescriptor.TYPE_STRING:
        if fid in _INT_AS_STRING and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise _Invalid(path, f"expected a string, got {_describe(value)}")
        choices = _CHOICES.get(fid)
        if choices and value not in choices:
            raise _Invalid(path, f"{_short(value)} is not one of {', '.join(choices)}")
        return value
    if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_INT64):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(path, f"expected an integer, got {_describe(value)}")
        lo, hi = _RANGES.get(fid, (0, _UINT32_MAX if field.type == FieldDescriptor.TYPE_UINT32 else _INT64_MAX))
        if not lo <= value <= hi:
            if value < lo and lo > 0 and hi in (_UINT32_MAX, _INT64_MAX):
                raise _Invalid(path, f"must be at least {lo}, got {value}")
            raise _Invalid(path, f"{value} is out of range {lo}-{hi}")
        return value
    if field.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _Invalid(path, f"expected true or false, got {_describe(value)}")
        return value
    raise AssertionError(f"config.proto field type {field.type} of {fid} is not handled")


# ---- pass 2: rules spanning fields, and defaults ----------------------------------------------

def _call(path, check, *args):
    """Run a dataplane.store.names check, moving its one-line complaint to `path`."""
    try:
        return check(*args)
    except GlasswingError as e:
        raise _Invalid(path, str(e)) from None


def _require(d, key, path):
    if key not in d:
        raise _Invalid(_sub(path, key), "required")
    return d[key]


def _labels(labels, path):
    for key, value in labels.items():
        try:
            names.labels([f"{key}="])
        except GlasswingError:
            raise _Invalid(path, f"invalid label key {_short(key)}: {_LABEL_RULE}") from None
        if value:
            try:
                names.labels([f"k={value}"])
            except GlasswingError:
                raise _Invalid(_sub(path, key), f"invalid label value {_short(value)}: {_LABEL_RULE}") from None


def _headers(headers, path):
    for key, value in headers.items():
        if not _HEADER_NAME.fullmatch(key):
            raise _Invalid(path, f"invalid header name {_short(key)}")
        if any(c in value for c in "\r\n\0"):
            raise _Invalid(_sub(path, key), "header values must not contain line breaks or NUL")


def _http_path(d, key, path):
    if key in d and not d[key].startswith("/"):
        raise _Invalid(_sub(path, key), f"must start with '/', got {_short(d[key])}")


def _check_metadata(md, kind):
    path = "metadata"
    name = _require(md, "name", path)
    if not kinds.KINDS[kind].namespaced:
        if name != MESH_SETTINGS_NAME:
            raise _Invalid("metadata.name", f"MeshSettings must be named {MESH_SETTINGS_NAME!r}, not {_short(name)}")
        if "namespace" in md:
            raise _Invalid("metadata.namespace", "MeshSettings is cluster-wide and takes no namespace")
    else:
        _call("metadata.name", names.name, kinds.KINDS[kind].word, name)
        _call("metadata.namespace", names.name, "namespace", md.setdefault("namespace", DEFAULT_NAMESPACE))
    _labels(md.get("labels", {}), "metadata.labels")


def _check_service(spec, path):
    if "vip" in spec:
        spec["vip"] = _call(_sub(path, "vip"), names.vip, spec["vip"])
    ports = spec.get("ports")
    if not ports:
        raise _Invalid(_sub(path, "ports"), "at least one port is required")
    by_port, by_name = {}, {}
    for i, p in enumerate(ports):
        pp = f"{path}.ports[{i}]"
        if "name" in p:
            _call(f"{pp}.name", names.name, "port", p["name"])
            if p["name"] in by_name:
                raise _Invalid(f"{pp}.name", f"duplicate port name {p['name']!r} (also {by_name[p['name']]})")
            by_name[p["name"]] = pp
        number = _require(p, "port", pp)
        if number in by_port:
            raise _Invalid(f"{pp}.port", f"duplicate port {number} (also {by_port[number]})")
        by_port[number] = pp
        p.setdefault("targetPort", number)
        # no protocol default: "" (undeclared) means sniff each connection, unlike "tcp"
    if "selector" in spec and "endpoints" in spec:
        raise _Invalid(_sub(path, "selector"), "selector and endpoints are mutually exclusive")
    if "selector" in spec:
        if not spec["selector"]:
            raise _Invalid(_sub(path, "selector"), "must name at least one label (an empty selector would pick every pod)")
        _labels(spec["selector"], _sub(path, "selector"))
    seen = {}
    for i, ep in enumerate(spec.get("endpoints", ())):
        ep_path = f"{path}.endpoints[{i}]"
        if "pod" in ep and "address" in ep:
            raise _Invalid(ep_path, "give either pod or address, not both")
        if "pod" in ep:
            _call(f"{ep_path}.pod", names.name, "pod", ep["pod"])
            ident = f"pod {ep['pod']}"
        elif "address" in ep:
            ep["address"] = _call(f"{ep_path}.address", names.address, ep["address"], POD_RANGE, "endpoint address")
            ident = f"address {ep['address']}"
        else:
            raise _Invalid(ep_path, "pod or address is required")
        if ep.get("port"):
            ident += f" port {ep['port']}"
        if ident in seen:
            raise _Invalid(ep_path, f"duplicate endpoint {ident} (also {seen[ident]})")
        seen[ident] = ep_path
        _labels(ep.get("labels", {}), f"{ep_path}.labels")
        if "zone" in ep:
            _call(f"{ep_path}.zone", names.name, "zone", ep["zone"])
        ep.setdefault("weight", 1)
    if "healthCheck" in spec:
        _check_health(spec["healthCheck"], _sub(path, "healthCheck"))


def _check_health(hc, path):
    kind = hc.setdefault("type", "tcp")
    if kind == "http":
        if "path" not in hc:
            raise _Invalid(_sub(path, "path"), "required for type http")
        _http_path(hc, "path", path)
    elif "path" in hc:
        raise _Invalid(_sub(path, "path"), "only valid for type http")
    interval = hc.setdefault("intervalMs", 10000)
    timeout = hc.setdefault("timeoutMs", min(1000, interval // 2))
    if timeout >= interval:
        raise _Invalid(_sub(path, "timeoutMs"), f"{timeout} must be less than intervalMs ({interval})")
    hc.setdefault("healthyThreshold", 1)
    hc.setdefault("unhealthyThreshold", 3)


def _check_endpoint(spec, path):
    _call(_sub(path, "service"), names.name, "service", _require(spec, "service", path))
    spec["address"] = _call(_sub(path, "address"), names.address, _require(spec, "address", path),
                            POD_RANGE, "endpoint address")
    _require(spec, "port", path)
    _labels(spec.get("labels", {}), _sub(path, "labels"))
    for key in ("zone", "node", "pod"):
        if key in spec:
            _call(_sub(path, key), names.name, key, spec[key])
    spec.setdefault("weight", 1)
    spec.setdefault("health", "unknown")


def _check_route(spec, path):
    _call(_sub(path, "service"), names.name, "service", _require(spec, "service", path))
    rules = spec.get("rules")
    if not rules:
        raise _Invalid(_sub(path, "rules"), "at least one rule is required")
    for i, rule in enumerate(rules):
        rp = f"{path}.rules[{i}]"
        if "match" in rule:
            _check_match(rule["match"], f"{rp}.match")
        if "split" in rule:
            for j, target in enumerate(rule["split"]):
                _labels(target.get("subset", {}), f"{rp}.split[{j}].subset")
            total = sum(t.get("weight", 0) for t in rule["split"])
            if total != 100:
                raise _Invalid(f"{rp}.split", f"weights add up to {total}, not 100")
        if "retries" in rule:
            retries, rtp = rule["retries"], f"{rp}.retries"
            _require(retries, "attempts", rtp)
            for j, cond in enumerate(retries.get("on", ())):
                if cond not in RETRY_CONDITIONS and not _STATUS_CODE.fullmatch(cond):
                    raise _Invalid(f"{rtp}.on[{j}]", f"{_short(cond)} is not a retry condition (expected "
                                   f"{', '.join(RETRY_CONDITIONS)} or a 3-digit status code)")
            per_try, timeout = retries.get("perTryTimeoutMs"), rule.get("timeoutMs")
            if per_try and timeout and per_try > timeout:
                raise _Invalid(f"{rtp}.perTryTimeoutMs", f"{per_try} exceeds the rule's timeoutMs ({timeout})")
        _headers(rule.get("setHeaders", {}), f"{rp}.setHeaders")
        if "fault" in rule:
            fault, fp = rule["fault"], f"{rp}.fault"
            if fault.get("delayPercent") and not fault.get("delayMs"):
                raise _Invalid(_sub(fp, "delayMs"), "required with delayPercent")
            if fault.get("abortPercent"):
                fault.setdefault("abortStatus", 503)


def _check_match(match, path):
    if "host" in match and not (_HOST.fullmatch(match["host"]) and len(match["host"]) <= 253):
        raise _Invalid(_sub(path, "host"), f"invalid host {_short(match['host'])}: use a lowercase DNS name, "
                       "optionally starting with '*.'")
    given = [k for k in ("pathExact", "pathPrefix", "pathRegex") if k in match]
    if len(given) > 1:
        raise _Invalid(path, f"give only one of pathExact, pathPrefix, pathRegex (got {' and '.join(given)})")
    _http_path(match, "pathExact", path)
    _http_path(match, "pathPrefix", path)
    if "pathRegex" in match:
        try:
            re.compile(match["pathRegex"])
        except re.error as e:
            raise _Invalid(_sub(path, "pathRegex"),
                           f"invalid regular expression {_short(match['pathRegex'])}: {e}") from None
    _headers(match.get("headers", {}), _sub(path, "headers"))


def _check_traffic_policy(spec, path):
    _call(_sub(path, "service"), names.name, "service", _require(spec, "service", path))
    spec.setdefault("loadBalancer", "round_robin")
    spec.setdefault("retryAttempts", 1)  # one retry elsewhere, as without a policy; 0 turns it off
    if "outlierDetection" in spec:
        od = spec["outlierDetection"]
        od.setdefault("consecutiveFailures", 5)
        od.setdefault("baseEjectionMs", 30000)
        od.setdefault("maxEjectionPercent", 10)
    if "rateLimit" in spec:
        rl = spec["rateLimit"]
        rl.setdefault("burst", _require(rl, "tokensPerSecond", _sub(path, "rateLimit")))


def _check_mesh_settings(spec, path):
    if "dnsSuffix" in spec:
        suffix = spec["dnsSuffix"]
        if not (_DNS_NAME.fullmatch(suffix) and len(suffix) <= 253):
            raise _Invalid(_sub(path, "dnsSuffix"), f"invalid DNS name {_short(suffix)}: use lowercase labels of "
                           "letters, digits and '-' separated by dots, such as 'mesh.local'")
    if "upstreamDns" in spec:
        spec["upstreamDns"] = _upstream_dns(spec["upstreamDns"], _sub(path, "upstreamDns"))
    seen = {}
    for i, ns in enumerate(spec.get("searchNamespaces", ())):
        np = f"{path}.searchNamespaces[{i}]"
        _call(np, names.name, "namespace", ns)
        if ns in seen:
            raise _Invalid(np, f"duplicate namespace {ns!r} (also {seen[ns]})")
        seen[ns] = np


def _upstream_dns(value, path) -> str:
    """'IP', 'IP:PORT', 'IPv6' or '[IPv6]:PORT' -> 'IP:PORT' / '[IPv6]:PORT' (port 53 by default)."""
    bad = _Invalid(path, f"invalid DNS server {_short(value)}: use IP or IP:PORT")
    host, port = value, "53"
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        port = rest[1:] if rest else port
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    if not port.isdigit():
        raise bad
    if not 1 <= int(port) <= 65535:
        raise _Invalid(path, f"port {int(port)} is out of range 1-65535")
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


_SPEC_CHECKS = {
    "Service": _check_service,
    "Endpoint": _check_endpoint,
    "Route": _check_route,
    "TrafficPolicy": _check_traffic_policy,
    "MeshSettings": _check_mesh_settings,
}


# ---- one document ---------------------------------------------------------------------------

def _build(doc) -> Message:
    if not isinstance(doc, dict):
        raise _Invalid(None, f"expected a mapping with {', '.join(_TOP_FIELDS)}, got {_describe(doc)}")
    for key in doc:
        if not isinstance(key, str):
            raise _Invalid(None, f"field names must be strings, got {_describe(key)}")
    version = _require(doc, "apiVersion", "")
    if version != API_VERSION:
        raise _Invalid("apiVersion", f"unsupported apiVersion {_short(version)} (expected {API_VERSION})")
    kind = _require(doc, "kind", "")
    if not isinstance(kind, str) or kind not in KINDS:
        raise _Invalid("kind", f"unknown kind {_short(kind)} (expected one of {', '.join(sorted(KINDS))})")
    for key in doc:
        if key not in _TOP_FIELDS:
            raise _unknown_field(_sub("", key), key, list(_TOP_FIELDS))
    cls = KINDS[kind]
    metadata = _shape(_require(doc, "metadata", ""), pb.Metadata.DESCRIPTOR, "metadata")
    spec = _shape(_require(doc, "spec", ""), cls.DESCRIPTOR.fields_by_name["spec"].message_type, "spec")
    _check_metadata(metadata, kind)
    _SPEC_CHECKS[kind](spec, "spec")
    message = cls()
    try:
        json_format.ParseDict({"metadata": metadata, "spec": spec}, message, ignore_unknown_fields=False)
    except json_format.ParseError as e:  # pass 1 and 2 should have caught everything
        raise _Invalid(None, f"not a valid {kind}: {e}") from None
    return message


def validate(doc_dict, file: str, index: int) -> Message:
    """The protobuf message (KINDS[kind]) for one parsed document, defaults filled in.

    Raises ConfigError `FILE: document INDEX: FIELD.PATH: REASON` for the first problem."""
    try:
        return _build(doc_dict)
    except _Invalid as e:
        raise ConfigError(e.reason, file=file, index=index, path=e.path) from None


# ---- reading sources --------------------------------------------------------------------------

_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, no timestamps, and duplicate keys refused."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                    continue
                if (key_node.tag, key_node.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _parse_yaml(file, text):
    """(index, data) for every non-empty document of a YAML stream, index counting all."""
    loader = _Loader(text)
    index = 0
    try:
        while True:
            index += 1
            if not loader.check_data():
                return
            data = loader.get_data()
            if data is not None:
                yield index, data
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"invalid YAML: {where}{e.problem or e.context}", file=file, index=index) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=file, index=index) from None
    finally:
        loader.dispose()


def _parse_json(file, text):
    """A JSON object is one document; a JSON array holds one document per element."""
    if not text.strip():
        return []
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON: line {e.lineno} column {e.colno}: {e.msg}", file=file) from None
    except _DuplicateKey as e:
        raise ConfigError(f"invalid JSON: duplicate key {e.args[0]!r}", file=file) from None
    if isinstance(data, list):
        return [(i, d) for i, d in enumerate(data, 1) if d is not None]
    return [(1, data)]


def _read(path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError("no such file or directory", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=path) from None
    except OSError as e:
        raise ConfigError(e.strerror or str(e), file=path) from None


def _parse(file, text, as_json):
    return _parse_json(file, text) if as_json else _parse_yaml(file, text)


def _raw_documents(source, stdin):
    """(file, index, parsed document) for every non-empty document of one source."""
    if source == "-":
        stream = sys.stdin if stdin is None else stdin
        text = stream if isinstance(stream, (str, bytes)) else stream.read()
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError("not UTF-8 text", file=STDIN_NAME) from None
        # JSON (as printed by `get -o json`) when it starts like JSON, YAML otherwise.
        for index, data in _parse(STDIN_NAME, text, text.lstrip().startswith(("{", "["))):
            yield STDIN_NAME, index, data
    elif os.path.isdir(source):
        try:
            entries = sorted(os.listdir(source))
        except OSError as e:
            raise ConfigError(e.strerror or str(e), file=source) from None
        for entry in entries:
            path = os.path.join(source, entry)
            if entry.startswith(".") or not entry.lower().endswith(EXTENSIONS) or not os.path.isfile(path):
                continue
            for index, data in _parse(path, _read(path), entry.lower().endswith(".json")):
                yield path, index, data
    else:
        for index, data in _parse(source, _read(source), source.lower().endswith(".json")):
            yield source, index, data


def _documents(source, stdin):
    for file, index, data in _raw_documents(source, stdin):
        message = validate(data, file, index)
        yield Document(file=file, index=index, kind=data["kind"], message=message, raw=data)


def load_documents(source: str, stdin=None) -> list:
    """Every document of one source, validated: a file, each *.yaml/*.yml/*.json file of a
    directory (sorted, not recursive, dotfiles skipped), or "-" for stdin (a text stream,
    sys.stdin by default). Empty documents are skipped. Raises ConfigError for the first
    problem."""
    return list(_documents(source, stdin))


def _ident(doc: Document) -> str:
    if doc.kind == "MeshSettings":
        return f"MeshSettings {doc.name}"
    return f"{doc.kind} {doc.namespace}/{doc.name}"


def load_all(sources, stdin=None) -> list:
    """Every document of every source, validated, in order; all or nothing.

    Raises the first ConfigError in source order, including a second document with the same
    kind, namespace and name as an earlier one, or when the sources hold no document at all."""
    if isinstance(sources, str):
        sources = [sources]
    docs, seen = [], {}
    for source in sources:
        for doc in _documents(source, stdin):
            ident = _ident(doc)
            if ident in seen:
                other = seen[ident]
                raise ConfigError(f"duplicate {ident} (also document {other.index} of {other.file})",
                                  file=doc.file, index=doc.index, path="metadata.name")
            seen[ident] = doc
            docs.append(doc)
    if not docs:
        shown = ", ".join(STDIN_NAME if s == "-" else s for s in sources) or "no sources"
        raise ConfigError(f"no documents found in {shown}")
    return docs


# ---- output ---------------------------------------------------------------------------------

def key_for(kind: str, message: Message) -> str:
    """The store key of a configuration object: /glasswing/config/KIND/NAMESPACE/NAME."""
    k = kinds.get(kind)
    name = message.metadata.name or ("" if k.namespaced else MESH_SETTINGS_NAME)
    return k.store_key(message.metadata.namespace, name)


def _message_dict(message) -> dict:
    """camelCase fields of a message, zero values and empty fields omitted, maps sorted."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            if value:
                nested = field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
                out[field.json_name] = {k: _message_dict(value[k]) if nested else value[k] for k in sorted(value)}
        elif field.is_repeated:
            if value:
                out[field.json_name] = [_message_dict(v) if field.type == FieldDescriptor.TYPE_MESSAGE else v
                                        for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if message.HasField(field.name):
                out[field.json_name] = _message_dict(value)
        elif value or _field_id(field) in _ZERO_KEPT:
            out[field.json_name] = value
    return out


def to_dict(message: Message, kind: str) -> dict:
    """The document for a message: apiVersion, kind, metadata, spec; camelCase, zero values omitted."""
    kinds.get(kind)
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": _message_dict(message.metadata), "spec": _message_dict(message.spec)}


def dump_yaml(docs) -> str:
    """A YAML stream of documents (dicts from to_dict), separated by `---`; one dict is one document."""
    if isinstance(docs, dict):
        docs = [docs]
    return yaml.safe_dump_all(list(docs), sort_keys=False, default_flow_style=False, allow_unicode=True)


def dump_json(docs) -> str:
    """JSON: an array of documents for a list, a single object for one dict. Both load again."""
    if not isinstance(docs, dict):
        docs = list(docs)
    return json.dumps(docs, indent=2, ensure_ascii=False) + "\n"
