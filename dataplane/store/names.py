"""Validation of names, addresses and ports given by users; each failure is one line."""
import ipaddress
import re

from dataplane.errors import GlasswingError
from dataplane.settings import MESH_RANGE6, SERVICE_RANGE, SERVICE_RANGE6

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]{0,61}[A-Za-z0-9])?$")


def name(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value or ""):
        raise GlasswingError(
            f"invalid {kind} name {value!r}: use 1-40 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit")
    return value


def port(value, what: str = "port") -> int:
    try:
        p = int(value)
    except (TypeError, ValueError):
        raise GlasswingError(f"invalid {what} {value!r}: not a number") from None
    if not 1 <= p <= 65535:
        raise GlasswingError(f"invalid {what} {p}: out of range 1-65535")
    return p


def address(value: str, network, what: str) -> str:
    """value as canonical text (IPv6 compressed), checked to be an address of network's family
    inside network, and not its network (or IPv4 broadcast) address."""
    v4 = network.version == 4
    try:
        ip = ipaddress.IPv4Address(value) if v4 else ipaddress.IPv6Address(value)
    except ValueError:
        raise GlasswingError(f"invalid {what} {value!r}: not an IPv{network.version} address") from None
    if ip not in network:
        raise GlasswingError(f"{what} {ip} is outside {network}")
    if ip == network.network_address or (v4 and ip == network.broadcast_address):
        raise GlasswingError(f"{what} {ip} is the network{' or broadcast' if v4 else ''} address of {network}")
    return str(ip)


def address6(value: str, what: str) -> str:
    """An endpoint's IPv6 address: inside MESH_RANGE6 but not the service range, as canonical
    compressed text."""
    ip = ipaddress.IPv6Address(address(value, MESH_RANGE6, what))
    if ip in SERVICE_RANGE6:
        raise GlasswingError(f"{what} {ip} is inside the service range {SERVICE_RANGE6}")
    return str(ip)


def vip(value: str) -> str:
    return address(value, SERVICE_RANGE, "service address")


def labels(pairs) -> dict:
    out = {}
    for pair in pairs or ():
        key, sep, val = pair.partition("=")
        if not sep or not _LABEL.fullmatch(key) or (val and not _LABEL.fullmatch(val)):
            raise GlasswingError(f"invalid label {pair!r}: use key=value")
        out[key] = val
    return out


def port_map(spec: str):
    """'80:8080' or '80' (same target port) -> (80, 8080)."""
    svc, sep, target = str(spec).partition(":")
    p = port(svc, "service port")
    t = port(target, "target port") if sep else p
    return p, t
