"""The typed, immutable view of the store that the dataplane consumes.

A Snapshot is everything a forwarder builds its catalog, policies, routes and BPF maps from:
nodes, pods, services, the endpoints forwarders registered, the config objects users applied
(Endpoint, Route, TrafficPolicy, MeshSettings) and the store revision it was read at. The
store layer makes it (registry.snapshot(doc)); nothing outside dataplane/store/ sees protobuf
or the store's records.

The config objects mirror dataplane/proto/config.proto field for field (snake_case names,
proto3's zero values as defaults): codec.py converts between a message and its mirror without
loss, by name. A message field that is absent is None here; a repeated field is a tuple; a map
is a Frozen dict. Objects from the store were validated with their defaults filled (schema.py),
so readers never need the defaults. Everything is frozen: a consumer cannot change what another one reads.
"""
from dataclasses import dataclass, field
from typing import Optional


class Frozen(dict):
    """A dict that refuses changes: the maps of snapshot objects. Equal to a dict with the same
    items, hashable, and copied or pickled as itself."""
    __slots__ = ()

    def _refuse(self, *_args, **_kwargs):
        raise TypeError("snapshot maps are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __hash__(self):
        return hash(frozenset(self.items()))

    def __reduce__(self):
        return Frozen, (dict(self),)


EMPTY = Frozen()


def _map():
    return field(default_factory=Frozen)


# ---- config objects: mirrors of config.proto ---------------------------------------------------

@dataclass(frozen=True)
class Metadata:
    name: str = ""
    namespace: str = ""   # "" only for cluster-wide kinds (MeshSettings)
    labels: Frozen = _map()
    revision: int = 0


@dataclass(frozen=True)
class ServicePort:
    name: str = ""
    port: int = 0
    target_port: int = 0
    protocol: str = ""    # "": undeclared, sniffed per connection; "tcp" or "http"


@dataclass(frozen=True)
class StaticEndpoint:
    pod: str = ""         # exactly one of pod and address
    port: int = 0         # 0: the service port's target_port
    address: str = ""
    labels: Frozen = _map()
    zone: str = ""
    weight: int = 0
    address6: str = ""


@dataclass(frozen=True)
class HealthCheck:
    type: str = ""
    path: str = ""
    interval_ms: int = 0
    timeout_ms: int = 0
    healthy_threshold: int = 0
    unhealthy_threshold: int = 0


@dataclass(frozen=True)
class ServiceSpec:
    vip: str = ""
    ports: tuple = ()                       # (ServicePort, ...)
    selector: Frozen = _map()
    endpoints: tuple = ()                   # (StaticEndpoint, ...)
    health_check: Optional[HealthCheck] = None
    vip6: str = ""                          # "": no IPv6 VIP
    ip_families: tuple = ()                 # ("IPv4", "IPv6") by default; vip is "" without IPv4


@dataclass(frozen=True)
class Service:
    metadata: Metadata = Metadata()
    spec: ServiceSpec = ServiceSpec()


@dataclass(frozen=True)
class EndpointSpec:
    service: str = ""
    address: str = ""
    port: int = 0
    labels: Frozen = _map()
    zone: str = ""
    weight: int = 0
    health: str = ""
    node: str = ""
    pod: str = ""
    address6: str = ""


@dataclass(frozen=True)
class Endpoint:
    metadata: Metadata = Metadata()
    spec: EndpointSpec = EndpointSpec()


@dataclass(frozen=True)
class RouteMatch:
    host: str = ""
    path_exact: str = ""
    path_prefix: str = ""
    path_regex: str = ""
    method: str = ""
    headers: Frozen = _map()


@dataclass(frozen=True)
class WeightedTarget:
    subset: Frozen = _map()
    weight: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 0
    per_try_timeout_ms: int = 0
    on: tuple = ()
    retry_non_idempotent: bool = False


@dataclass(frozen=True)
class Fault:
    delay_ms: int = 0
    delay_percent: int = 0
    abort_status: int = 0
    abort_percent: int = 0


@dataclass(frozen=True)
class RouteRule:
    match: Optional[RouteMatch] = None      # None or empty: everything
    split: tuple = ()                       # (WeightedTarget, ...)
    timeout_ms: int = 0
    retries: Optional[RetryPolicy] = None
    set_headers: Frozen = _map()
    fault: Optional[Fault] = None


@dataclass(frozen=True)
class RouteSpec:
    service: str = ""
    rules: tuple = ()                       # (RouteRule, ...)


@dataclass(frozen=True)
class Route:
    metadata: Metadata = Metadata()
    spec: RouteSpec = RouteSpec()


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_failures: int = 0
    base_ejection_ms: int = 0
    max_ejection_percent: int = 0


@dataclass(frozen=True)
class RateLimit:
    tokens_per_second: int = 0
    burst: int = 0


@dataclass(frozen=True)
class TrafficPolicySpec:
    service: str = ""
    load_balancer: str = ""
    connect_timeout_ms: int = 0
    idle_timeout_ms: int = 0
    max_connections: int = 0
    max_pending: int = 0
    retry_attempts: int = 0
    outlier_detection: Optional[OutlierDetection] = None
    rate_limit: Optional[RateLimit] = None


@dataclass(frozen=True)
class TrafficPolicy:
    metadata: Metadata = Metadata()
    spec: TrafficPolicySpec = TrafficPolicySpec()


@dataclass(frozen=True)
class MeshSettingsSpec:
    dns_suffix: str = ""
    upstream_dns: str = ""                  # "IP:PORT" or "[IPv6]:PORT"; "": none
    search_namespaces: tuple = ()
    default_connect_timeout_ms: int = 0


@dataclass(frozen=True)
class MeshSettings:
    metadata: Metadata = Metadata()
    spec: MeshSettingsSpec = MeshSettingsSpec()


# The mirrors by config.proto message name, for codec.py.
MIRRORS = {cls.__name__: cls for cls in (
    Metadata, ServicePort, StaticEndpoint, HealthCheck, ServiceSpec, Service, EndpointSpec, Endpoint,
    RouteMatch, WeightedTarget, RetryPolicy, Fault, RouteRule, RouteSpec, Route, OutlierDetection,
    RateLimit, TrafficPolicySpec, TrafficPolicy, MeshSettingsSpec, MeshSettings)}


# ---- what nodes and forwarders keep in the store ----------------------------------------------

@dataclass(frozen=True)
class Node:
    name: str
    ip: str = ""          # underlay address; "" for the local node without one
    zone: str = ""
    pod_cidr: str = ""


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ip: str = ""
    ip6: str = ""         # "" for a pod made before pods were dual-stack
    namespace: str = "default"
    labels: Frozen = _map()
    fail_mode: str = "open"  # "open" or "closed": what connect4 does when the forwarder is away
    zone: str = ""


@dataclass(frozen=True)
class PublishedEndpoint:
    """One endpoint a node's forwarder registered (under its lease) for a service port."""
    service: str          # the service's key, "NAMESPACE/NAME"
    service_port: int
    pod: str
    node: str
    ip: str
    port: int
    health: str = "unknown"  # "healthy", "unhealthy" or "unknown"
    zone: str = ""
    weight: int = 1
    labels: Frozen = _map()
    ip6: str = ""         # the pod's IPv6 address; "" when it has none


@dataclass(frozen=True)
class Snapshot:
    """The store at one revision. Maps are keyed as in the store document: services, routes,
    traffic policies and endpoint objects by "NAMESPACE/NAME", published endpoints by their store
    key, nodes and pods by name."""
    revision: int = 0
    cluster: Optional[str] = None
    nodes: Frozen = _map()                  # name -> Node
    pods: Frozen = _map()                   # name -> Pod
    services: Frozen = _map()               # "ns/name" -> Service
    endpoints: Frozen = _map()              # store key -> PublishedEndpoint
    endpoint_objects: Frozen = _map()       # "ns/name" -> Endpoint (applied by users)
    routes: Frozen = _map()                 # "ns/name" -> Route
    traffic_policies: Frozen = _map()       # "ns/name" -> TrafficPolicy
    mesh: Optional[MeshSettingsSpec] = None  # the MeshSettings spec; None when none was applied
    # The store layer's bookkeeping, not for consumers: {section: {key: (record, typed object)}}
    # of the records this snapshot was made from, so the next one can reuse what did not change.
    records: dict = field(default=None, compare=False, repr=False)
