"""Services in the store: a name, a VIP per address family (198.19.0.0/16 and
2001:2:0:ffff::/64, see vips.py), port mappings, and endpoints named by pod or picked by a
label selector."""
import ipaddress

from dataplane.store import names, vips
from dataplane.errors import GlasswingError


def split_name(name: str):
    """'orders' or 'shop/orders' -> (namespace, name), both validated."""
    ns, sep, short = name.rpartition("/")
    ns = ns if sep else "default"
    names.name("namespace", ns)
    names.name("service", short)
    return ns, short


def key_of(name: str) -> str:
    ns, short = split_name(name)
    return f"{ns}/{short}"


PROTOCOLS = ("tcp", "http")
IP_FAMILY = {"dual": vips.DUAL, "ipv4": (vips.IPV4,), "ipv6": (vips.IPV6,)}  # --ip-family -> ip_families


def port_spec(spec: str):
    """'80', '80:8080', '80:8080/http' or '80/tcp' -> (port, target, protocol). Without a
    suffix the protocol is "" (undeclared): the forwarder sniffs each connection's first bytes
    for HTTP/1.1. "tcp" is opaque L4, never sniffed; "http" is HTTP/1.1, never sniffed."""
    spec, sep, proto = str(spec).partition("/")
    if sep and proto not in PROTOCOLS:
        raise GlasswingError(f"port protocol must be one of {', '.join(PROTOCOLS)}, not {proto!r}")
    p, t = names.port_map(spec)
    return p, t, proto


def add_service(doc: dict, name: str, ports: list, endpoints: list = (), selector: dict = None,
                vip: str = None, socket_lb: bool = False, vip6: str = None, ip_family: str = "dual") -> dict:
    """The record of a new service, added to doc["services"]. ip_family is "dual" (both VIPs),
    "ipv4" or "ipv6" (`--ip-family`); vip and vip6 are allocated when not given (vips.assign)."""
    if ip_family not in IP_FAMILY:
        raise GlasswingError(f"invalid IP family {ip_family!r}: use {', '.join(IP_FAMILY)}")
    ns, short = split_name(name)
    key = f"{ns}/{short}"
    if key in doc["services"]:
        raise GlasswingError(f"service {name!r} already exists")
    if not ports:
        raise GlasswingError(f"service {name!r} needs at least one --port")
    mapped, seen = [], set()
    for spec in ports:
        p, t, proto = port_spec(spec)
        if p in seen:
            raise GlasswingError(f"service port {p} given twice")
        seen.add(p)
        mapped.append({"port": p, "target": t, "protocol": proto, "name": ""})
    if endpoints and selector:
        raise GlasswingError("give either --endpoint or --selector, not both")
    eps = []
    for spec in endpoints or ():
        pod, sep, port = spec.partition(":")
        if pod not in doc["pods"]:
            raise GlasswingError(f"unknown pod {pod!r} in endpoint {spec!r}")
        ep = {"pod": pod, "port": names.port(port, "endpoint port") if sep else None, "address": None,
              "weight": 1, "zone": "", "labels": {}}
        if ep in eps:
            raise GlasswingError(f"endpoint {spec!r} given twice")
        eps.append(ep)
    rec = {"namespace": ns, "name": short, "labels": {"glasswing.dev/lb": "socket"} if socket_lb else {},
           "vip": vip or "", "vip6": vip6 or "", "ip_families": list(IP_FAMILY[ip_family]), "ports": mapped,
           "endpoints": eps, "selector": selector or None, "health_check": None}
    vips.assign(rec, *vips.taken(doc["services"]))
    doc["services"][key] = rec
    return rec


def remove_service(doc: dict, name: str) -> dict:
    get_service(doc, name)
    return doc["services"].pop(key_of(name))


def _unknown(name):
    raise GlasswingError(f"unknown service {name!r} (see `glasswing service list`)")


def get_service(doc: dict, name: str) -> dict:
    key = key_of(name)
    if key not in doc["services"]:
        _unknown(name)
    return doc["services"][key]


def endpoints(doc: dict, svc: dict, mapping: dict) -> list:
    """[(pod name, pod record, target port)] for one port mapping of a service."""
    out = []
    if svc.get("selector"):
        sel, ns = svc["selector"], svc.get("namespace", "default")
        for pname in sorted(doc["pods"]):
            pod = doc["pods"][pname]
            if pod.get("namespace", "default") == ns and \
                    all(pod.get("labels", {}).get(k) == v for k, v in sel.items()):
                out.append((pname, pod, mapping["target"]))
        return out
    for ep in svc["endpoints"]:
        pod = doc["pods"].get(ep["pod"]) if ep.get("pod") else None
        if pod is not None:
            out.append((ep["pod"], pod, ep["port"] or mapping["target"]))
    return out


def vip_int(vip: str) -> int:
    return int(ipaddress.IPv4Address(vip))
