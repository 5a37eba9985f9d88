"""The kinds of configuration object, each described once.

Everything that depends on the list of kinds reads it from here: the schema (which message a
document becomes, which rules check it, how its names are described in errors), `glasswing
apply/get/delete` (the spellings users may give), the registry (the store key of each object,
which message its bytes decode to) and the snapshot (which typed section an object lands in).

Key layout, for every kind:
    store key   /glasswing/config/SECTION/NAMESPACE/NAME   (NAMESPACE "-" for cluster-wide kinds)
    doc key     NAMESPACE/NAME                              (the same "-" for cluster-wide kinds)
In the store the value is the object's protobuf message. In the store document (registry.py)
services are records (doc["services"]); every other kind is the typed mirror of its message
(snapshot.py, via codec.py) in doc["config"][SECTION].
"""
from dataclasses import dataclass
from typing import Callable

from dataplane.errors import GlasswingError
from dataplane.proto import config_pb2 as pb
from dataplane.store import rules

KEY_PREFIX = "/glasswing/config"
DEFAULT_NAMESPACE = "default"
CLUSTER_WIDE = "-"  # the namespace segment of cluster-wide objects' keys
MESH_SETTINGS_NAME = "mesh"  # the only MeshSettings there is


@dataclass(frozen=True)
class Kind:
    name: str             # as in documents: "TrafficPolicy"
    message: type         # its config_pb2 message class
    section: str          # store key segment and doc["config"] section: "trafficpolicy"
    word: str             # how its names are described in errors: "traffic policy"
    check: Callable       # rules.check_KIND(spec, path): pass 2 of validation, defaults filled
    aliases: tuple = ()   # user spellings besides the lowercase name and its plural
    namespaced: bool = True

    @property
    def spellings(self) -> tuple:
        """Every word `glasswing get/delete` accepts for this kind (lowercase)."""
        low = self.name.lower()
        return (low, low + "s") + self.aliases

    def doc_key(self, namespace: str, name: str) -> str:
        """The object's key within its section of the store document."""
        if not self.namespaced:
            return f"{CLUSTER_WIDE}/{name}"
        return f"{namespace or DEFAULT_NAMESPACE}/{name}"

    def store_key(self, namespace: str, name: str) -> str:
        return f"{KEY_PREFIX}/{self.section}/{self.doc_key(namespace, name)}"


SERVICE = Kind("Service", pb.Service, "service", "service", rules.check_service, ("svc",))
ENDPOINT = Kind("Endpoint", pb.Endpoint, "endpoint", "endpoint", rules.check_endpoint, ("ep",))
ROUTE = Kind("Route", pb.Route, "route", "route", rules.check_route)
TRAFFIC_POLICY = Kind("TrafficPolicy", pb.TrafficPolicy, "trafficpolicy", "traffic policy",
                      rules.check_traffic_policy, ("policy", "policies", "trafficpolicies"))
MESH_SETTINGS = Kind("MeshSettings", pb.MeshSettings, "meshsettings", "mesh settings",
                     rules.check_mesh_settings, namespaced=False)

KINDS = {k.name: k for k in (SERVICE, ENDPOINT, ROUTE, TRAFFIC_POLICY, MESH_SETTINGS)}
BY_SECTION = {k.section: k for k in KINDS.values()}
# Kinds kept as typed objects in doc["config"][section] (Service as records in doc["services"]).
CONFIG_KINDS = tuple(k for k in KINDS.values() if k is not SERVICE)
_SPELLINGS = {word: k.name for k in KINDS.values() for word in k.spellings}


def _unknown(word) -> GlasswingError:
    return GlasswingError(f"unknown kind {word!r} (expected one of {', '.join(sorted(KINDS))})")


def get(name: str) -> Kind:
    """The Kind named exactly `name` ("TrafficPolicy"); GlasswingError for any other."""
    kind = KINDS.get(name)
    if kind is None:
        raise _unknown(name)
    return kind


def kind_of(word: str) -> str:
    """The kind name for a user's spelling ("svc", "Routes", "policy"...)."""
    name = _SPELLINGS.get(word.lower())
    if name is None:
        raise _unknown(word)
    return name
