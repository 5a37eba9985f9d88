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

The modules: kinds.py (the kinds, and which message and rules each has), problems.py (ConfigError
and the wording of problems), shape.py (pass 1), rules.py (pass 2), sources.py (reading files,
directories and stdin as YAML or JSON); this module ties them together and writes documents back
out for `get`.
"""
import json
from dataclasses import dataclass

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from dataplane.proto import config_pb2 as pb
from dataplane.store import kinds, names
from dataplane.store.problems import ConfigError, Invalid, describe, short, sub, unknown_field
from dataplane.store.rules import call, labels, require
from dataplane.store.shape import (HTTP_METHODS, LOAD_BALANCERS, RETRY_CONDITIONS,  # noqa: F401 - re-exported
                                   ZERO_KEPT, field_id, is_map, shape)
from dataplane.store.sources import _Loader, raw_documents  # noqa: F401 - _Loader for tests
from dataplane.store.sources import EXTENSIONS, STDIN_NAME  # noqa: F401 - re-exported

API_VERSION = "glasswing.dev/v1"
KINDS = {name: kind.message for name, kind in kinds.KINDS.items()}  # kind name -> message class
MESH_SETTINGS_NAME = kinds.MESH_SETTINGS_NAME
DEFAULT_NAMESPACE = kinds.DEFAULT_NAMESPACE
KEY_PREFIX = kinds.KEY_PREFIX
_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec")


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


# ---- one document ---------------------------------------------------------------------------

def _check_metadata(md, kind):
    path = "metadata"
    name = require(md, "name", path)
    if not kinds.KINDS[kind].namespaced:
        if name != MESH_SETTINGS_NAME:
            raise Invalid("metadata.name", f"MeshSettings must be named {MESH_SETTINGS_NAME!r}, not {short(name)}")
        if "namespace" in md:
            raise Invalid("metadata.namespace", "MeshSettings is cluster-wide and takes no namespace")
    else:
        call("metadata.name", names.name, kinds.KINDS[kind].word, name)
        call("metadata.namespace", names.name, "namespace", md.setdefault("namespace", DEFAULT_NAMESPACE))
    labels(md.get("labels", {}), "metadata.labels")


def _build(doc) -> Message:
    if not isinstance(doc, dict):
        raise Invalid(None, f"expected a mapping with {', '.join(_TOP_FIELDS)}, got {describe(doc)}")
    for key in doc:
        if not isinstance(key, str):
            raise Invalid(None, f"field names must be strings, got {describe(key)}")
    version = require(doc, "apiVersion", "")
    if version != API_VERSION:
        raise Invalid("apiVersion", f"unsupported apiVersion {short(version)} (expected {API_VERSION})")
    kind = require(doc, "kind", "")
    if not isinstance(kind, str) or kind not in KINDS:
        raise Invalid("kind", f"unknown kind {short(kind)} (expected one of {', '.join(sorted(KINDS))})")
    for key in doc:
        if key not in _TOP_FIELDS:
            raise unknown_field(sub("", key), key, list(_TOP_FIELDS))
    cls = KINDS[kind]
    metadata = shape(require(doc, "metadata", ""), pb.Metadata.DESCRIPTOR, "metadata")
    spec = shape(require(doc, "spec", ""), cls.DESCRIPTOR.fields_by_name["spec"].message_type, "spec")
    _check_metadata(metadata, kind)
    kinds.KINDS[kind].check(spec, "spec")
    message = cls()
    try:
        json_format.ParseDict({"metadata": metadata, "spec": spec}, message, ignore_unknown_fields=False)
    except json_format.ParseError as e:  # pass 1 and 2 should have caught everything
        raise Invalid(None, f"not a valid {kind}: {e}") from None
    return message


def validate(doc_dict, file: str, index: int) -> Message:
    """The protobuf message (KINDS[kind]) for one parsed document, defaults filled in.

    Raises ConfigError `FILE: document INDEX: FIELD.PATH: REASON` for the first problem."""
    try:
        return _build(doc_dict)
    except Invalid as e:
        raise ConfigError(e.reason, file=file, index=index, path=e.path) from None


# ---- sources ----------------------------------------------------------------------------------

def _documents(source, stdin):
    for file, index, data in raw_documents(source, stdin):
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
        if is_map(field):
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
        elif value or field_id(field) in ZERO_KEPT:
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

