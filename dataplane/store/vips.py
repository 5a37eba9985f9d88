"""Service VIPs, one per address family a service has: IPv4 from 198.19.0.0/16, IPv6 from
2001:2:0:ffff::/64 (settings.SERVICE_RANGE, SERVICE_RANGE6). Both ways services are made
(`glasswing service add` through services.py, `glasswing apply` through config.py) check and
allocate them here, so the two agree.

ip_families lists the families a service has, in the order ("IPv4", "IPv6"); both by default. A
service without IPv4 has vip "", one without IPv6 has vip6 "". An allocated IPv6 VIP pairs with
the IPv4 one: the /64's prefix followed by the 32 bits of the IPv4 VIP (198.19.0.10 ->
2001:2:0:ffff::c613:a), so people can tell which belong together; an IPv6-only service (or a
pair already taken) gets the next free address from the /64's 10th on."""
import ipaddress

from dataplane.errors import GlasswingError
from dataplane.settings import SERVICE_RANGE, SERVICE_RANGE6
from dataplane.store import names

IPV4, IPV6 = "IPv4", "IPv6"
FAMILIES = (IPV4, IPV6)
DUAL = FAMILIES
_FIRST = 10  # allocation starts at the range's 10th address: the ones below are for people to pick


class VipError(GlasswingError):
    """A service's VIPs or families refused; field is the record field at fault ("vip",
    "vip6" or "ipFamilies"), the message says why without naming it."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field


def families(given) -> tuple:
    """The families a service asks for (a list of "IPv4"/"IPv6"; empty or None: both), checked
    and in the order ("IPv4", "IPv6")."""
    given = list(given or ())
    if not given:
        return DUAL
    for f in given:
        if f not in FAMILIES:
            raise GlasswingError(f"invalid IP family {f!r}: use IPv4 or IPv6")
    if len(set(given)) != len(given):
        raise GlasswingError(f"IP family given twice in {', '.join(given)}")
    return tuple(f for f in FAMILIES if f in given)


def vip6(value: str) -> str:
    """A given IPv6 VIP, checked to lie inside SERVICE_RANGE6, as canonical compressed text."""
    return names.address(value, SERVICE_RANGE6, "IPv6 service address")


def paired(vip: str) -> str:
    """The IPv6 VIP that pairs with an IPv4 one: SERVICE_RANGE6's prefix + its 32 bits."""
    return str(SERVICE_RANGE6.network_address + int(ipaddress.IPv4Address(vip)))


def taken(services: dict, skip: str = None) -> tuple:
    """({IPv4 VIPs}, {IPv6 VIPs}) the services of a store document hold, but service `skip`."""
    four, six = set(), set()
    for key, s in services.items():
        if key != skip:
            four.add(s.get("vip") or "")
            six.add(s.get("vip6") or "")
    four.discard("")
    six.discard("")
    return four, six


def free4(taken4) -> str:
    start = SERVICE_RANGE.network_address + _FIRST
    vip = next((str(h) for h in SERVICE_RANGE.hosts() if h >= start and str(h) not in taken4), None)
    if vip is None:
        raise GlasswingError(f"no free service address left in {SERVICE_RANGE}")
    return vip


def free6(taken6, vip: str = "") -> str:
    """The IPv6 VIP paired with `vip` when there is one and it is free, else the next free."""
    if vip and paired(vip) not in taken6:
        return paired(vip)
    ip = SERVICE_RANGE6.network_address + _FIRST
    while str(ip) in taken6:
        ip += 1
    return str(ip)


def assign(rec: dict, taken4: set, taken6: set, old: dict = None) -> dict:
    """Fill a service record's ip_families, vip and vip6: given VIPs checked (in range, of a
    family the service has, not held by another service), missing ones kept from `old` (the
    record this one replaces) or allocated. Adds what it assigns to taken4 and taken6.
    Raises VipError."""
    try:
        fams = families(rec.get("ip_families"))
    except GlasswingError as e:
        raise VipError("ipFamilies", str(e)) from None
    old = old or {}
    rec["ip_families"] = list(fams)
    for field, family, what, check, have, free in (
            ("vip", IPV4, "service address", names.vip, taken4, lambda: free4(taken4)),
            ("vip6", IPV6, "IPv6 service address", vip6, taken6, lambda: free6(taken6, rec.get("vip") or ""))):
        given = rec.get(field) or ""
        if family not in fams:
            if given:
                raise VipError(field, f"{what} {given} given, but the service has no {family} "
                                      f"(IP families {', '.join(fams)})")
            rec[field] = ""
            continue
        if given:
            try:
                given = check(given)
            except GlasswingError as e:
                raise VipError(field, str(e)) from None
            if given in have and given != old.get(field):
                raise VipError(field, f"{what} {given} is already in use")
            rec[field] = given
        else:
            rec[field] = old.get(field) or free()
        have.add(rec[field])
    return rec
