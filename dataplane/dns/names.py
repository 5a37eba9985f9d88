"""Which mesh service a DNS name means, for the forwarder's resolver lookup. Pure: no I/O.

classify(name, pod_namespace, suffix, services) -> (kind, ips), kind being one of
"found" (ips: the service's VIPs, IPv4 and IPv6), "nxdomain", "nodata" or "outside" (ips empty), the kinds
dataplane.dns.resolver.Resolver expects from its lookup callback.

Names, case-insensitive, one trailing dot tolerated; ZONE is the suffix (default
"svc.glasswing"), and "svc.glasswing" is always accepted besides a custom suffix:
- NAME                 service NAME in the pod's namespace, else "outside" (a host name
                       for the upstream resolver)
- NAME.NAMESPACE       that service; "nxdomain" if NAMESPACE has services but not NAME;
                       "outside" if NAMESPACE is not a known namespace (example.com)
- NAME.NAMESPACE.ZONE  that service (NAME.<pod namespace>.ZONE is the pod's search-domain
                       form of NAME), else "nxdomain"
- ZONE itself and NAMESPACE.ZONE for a known namespace: "nodata". Those names exist (they
  have services below them); NXDOMAIN would tell caches that do RFC 8020 "NXDOMAIN cut"
  that nothing below exists either, hiding every service of the namespace.
- anything else ending in ZONE: "nxdomain" (search-list expansions such as
  web.other.default.svc.glasswing fail fast instead of leaving the node)
- everything else: "outside".
"""

DEFAULT_SUFFIX = "svc.glasswing"

FOUND, NXDOMAIN, NODATA, OUTSIDE = "found", "nxdomain", "nodata", "outside"


def _norm(name) -> str:
    name = str(name or "").lower()
    return name[:-1] if name.endswith(".") else name


def _ips(vip) -> list:
    if isinstance(vip, (list, tuple)):
        return [str(v) for v in vip]
    return [str(vip)]


class Names:
    """services normalized once for many lookups: pass it to classify instead
    of the raw mapping, so a query costs O(1), not O(services)."""

    def __init__(self, services):
        self.table = {(_norm(ns), _norm(svc)): vip for (ns, svc), vip in (services or {}).items()}
        self.namespaces = {ns for ns, _ in self.table}


def classify(name: str, pod_namespace: str | None, suffix: str | None = DEFAULT_SUFFIX,
             services=None) -> tuple:
    """(kind, ips) for name asked from a pod in pod_namespace; services maps (namespace, name) -> vip,
    or is a Names built from such a mapping.

    A vip may also be a list of addresses (a service's IPv4 and IPv6 VIPs). suffix None or "" means DEFAULT_SUFFIX.
    """
    names = services if isinstance(services, Names) else Names(services)
    table, namespaces = names.table, names.namespaces
    pod_ns = _norm(pod_namespace)
    name = _norm(name)
    if not name:
        return OUTSIDE, []
    zones = {_norm(suffix).strip(".") or DEFAULT_SUFFIX, DEFAULT_SUFFIX}

    for zone in sorted(zones, key=len, reverse=True):  # the longest zone that matches wins
        if name == zone:
            return NODATA, []
        if name.endswith("." + zone):
            labels = name[:-len(zone) - 1].split(".")
            if len(labels) == 2:
                svc, ns = labels
                if (ns, svc) in table:
                    return FOUND, _ips(table[(ns, svc)])
            elif len(labels) == 1 and labels[0] in namespaces:
                return NODATA, []
            return NXDOMAIN, []

    labels = name.split(".")
    if len(labels) == 1:
        if pod_ns and (pod_ns, name) in table:
            return FOUND, _ips(table[(pod_ns, name)])
        return OUTSIDE, []
    if len(labels) == 2:
        svc, ns = labels
        if (ns, svc) in table:
            return FOUND, _ips(table[(ns, svc)])
        if ns in namespaces:
            return NXDOMAIN, []
    return OUTSIDE, []
