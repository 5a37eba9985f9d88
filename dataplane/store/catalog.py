"""The forwarder's view of the store, indexed for what each connection and
each DNS query asks: service by VIP:port, endpoints of a service port,
VIP by name. Built from a store Snapshot on every store change (off the
per-connection path), read-only in between."""
from dataclasses import dataclass, field

SOCKET_LB_LABEL = "glasswing.dev/lb"  # "socket": load balance in connect4


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of a service port. Equal (and hashed) by where it is and
    how it is weighted; labels ride along without taking part, so policy state
    kept per endpoint (least-request counts, weighted scores) survives a
    label change. Outlier state is keyed by addr, which survives weight and
    zone changes too."""
    pod: str
    node: str
    ip: str               # IPv4; "" for an endpoint with only an IPv6 address
    port: int
    weight: int = 1       # EndpointSpec.weight, 1-1000
    zone: str = ""        # "" when unknown
    labels: dict = field(default_factory=dict, compare=False, repr=False)
    ip6: str = ""         # "" when the endpoint has no IPv6 address

    @property
    def addr(self) -> tuple:
        return self.ip or self.ip6, self.port


@dataclass
class ServicePort:
    service: str          # the service's key in the store
    port: int
    target: int
    endpoints: list = field(default_factory=list)
    socket_lb: bool = False  # connect4 picks endpoints; no forwarder on the path
    protocol: str = ""    # "": sniff each connection; "tcp": opaque L4; "http": HTTP/1.1


class Catalog:
    """Built from a store Snapshot (store/snapshot.py), and from nothing else."""

    def __init__(self, snapshot):
        self.revision = snapshot.revision
        self.by_vip = {}      # (vip, port) -> ServicePort, for the IPv4 and the IPv6 VIP (text)
        self.by_name = {}     # (service key, port) -> ServicePort
        self.vips = {}        # (namespace, name) -> IPv4 vip ("" for an IPv6-only service)
        self.vips6 = {}       # (namespace, name) -> IPv6 vip ("" for an IPv4-only service)
        self._dns_names = None
        for key, svc in snapshot.services.items():
            md, spec = svc.metadata, svc.spec
            self.vips[(md.namespace, md.name)] = spec.vip
            self.vips6[(md.namespace, md.name)] = spec.vip6
            for m in spec.ports:
                sp = ServicePort(key, m.port, m.target_port, protocol=m.protocol,
                                 socket_lb=md.labels.get(SOCKET_LB_LABEL) == "socket")
                for vip in (spec.vip, spec.vip6):
                    if vip:
                        self.by_vip[(vip, m.port)] = sp
                self.by_name[(key, m.port)] = sp
                # endpoints given by address are outside any pod: reached directly
                for ep in spec.endpoints:
                    if ep.address or ep.address6:
                        sp.endpoints.append(Endpoint(None, None, ep.address, ep.port or m.target_port,
                                                     ep.weight or 1, ep.zone, ep.labels, ep.address6))
        # Endpoint objects a user applied, for every port of their service
        for ekey, obj in snapshot.endpoint_objects.items():
            s = obj.spec
            if s.health == "unhealthy":
                continue
            skey = f"{ekey.split('/', 1)[0]}/{s.service}"
            for (k, _port), sp in self.by_name.items():
                if k == skey:
                    sp.endpoints.append(Endpoint(None, None, s.address, s.port, s.weight or 1, s.zone, s.labels,
                                                 s.address6))
        # endpoints as their nodes' forwarders registered them (leased), in key order
        for ekey in sorted(snapshot.endpoints):
            e = snapshot.endpoints[ekey]
            sp = self.by_name.get((e.service, e.service_port))
            if sp is not None and e.health != "unhealthy":
                sp.endpoints.append(Endpoint(e.pod, e.node, e.ip, e.port, e.weight or 1, e.zone, e.labels, e.ip6))

    @property
    def dns_names(self):
        """Service names normalized for the resolver, with their IPv4 and IPv6 VIPs (those a
        service has), built on first use per catalog."""
        if self._dns_names is None:
            from dataplane.dns.names import Names
            self._dns_names = Names({k: [v for v in (vip, self.vips6.get(k)) if v] for k, vip in self.vips.items()})
        return self._dns_names

    def service_port(self, vip: str, port: int):
        return self.by_vip.get((vip, port))
