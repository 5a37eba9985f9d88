"""Links, addresses and routes over rtnetlink (pyroute2), in this namespace or a
named one, with every error turned into one line naming what failed. Control
path only.

    with netlink.opened(ns) as nl:      # one socket, closed when the block ends
        nl.add_address("eth0", "198.18.1.5/32")

A socket for a named namespace is made by the calling thread from inside it
(netns.inside: the thread comes straight back), so no child process is forked
per socket. What is made looks exactly as `ip` would make it: routes are
protocol boot in the main table, unicast ones without a gateway scope link.

pyroute2 is imported on first use: importing it costs about 100 ms (its package
loads every protocol it has), which commands that never touch netlink (`pod list`,
`status`) should not pay.
"""
import contextlib
import errno
import os
import socket

from dataplane.errors import GlasswingError
from dataplane.host import netns

RTPROT_BOOT = 3          # what `ip route add` sets, and so hides in `ip route show`
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
IFA_F_NODAD = 0x02


@contextlib.contextmanager
def opened(ns: str = None):
    """A Netlink on one rtnetlink socket in namespace ns (None: the caller's),
    closed however the block ends."""
    from pyroute2 import IPRoute
    if ns:
        with netns.inside(ns):
            ipr = IPRoute()
    else:
        ipr = IPRoute()
    with ipr:
        yield Netlink(ipr, ns)


class Netlink:
    """The operations the topology needs, each one request on one socket."""

    def __init__(self, ipr, ns: str = None):
        self.ipr, self.ns = ipr, ns

    def _fail(self, what: str, e: Exception):
        where = f" in netns {self.ns}" if self.ns else ""
        code = getattr(e, "code", None)  # pyroute2's NetlinkError carries the errno here
        reason = os.strerror(code) if isinstance(code, int) else (getattr(e, "strerror", None) or str(e))
        raise GlasswingError(f"cannot {what}{where}: {reason}") from None

    def _do(self, what: str, fn, *args, **kw):
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            return fn(*args, **kw)
        except (NetlinkError, OSError) as e:
            self._fail(what, e)

    # ------------------------------------------------------------ links

    def index(self, ifname: str):
        """The interface's index, or None when there is none by that name."""
        found = self._do(f"look up interface {ifname}", self.ipr.link_lookup, ifname=ifname)
        return found[0] if found else None

    def _index(self, ifname: str, what: str) -> int:
        idx = self.index(ifname)
        if idx is None:
            self._fail(what, OSError(errno.ENODEV, os.strerror(errno.ENODEV)))
        return idx

    def exists(self, ifname: str) -> bool:
        return self.index(ifname) is not None

    def up(self, ifname: str) -> None:
        what = f"set {ifname} up"
        self._do(what, self.ipr.link, "set", index=self._index(ifname, what), state="up")

    def add_bridge(self, name: str) -> None:
        self._do(f"add bridge {name}", self.ipr.link, "add", ifname=name, kind="bridge")

    def add_veth(self, name: str, peer: str, peer_ns: str) -> None:
        """A veth pair: name here, peer in the named namespace peer_ns."""
        what = f"add veth {name} with peer {peer} in netns {peer_ns}"
        fd = netns.open_fd(peer_ns)
        try:
            self._do(what, self.ipr.link, "add", ifname=name, kind="veth",
                     peer={"ifname": peer, "net_ns_fd": fd})
        finally:
            os.close(fd)

    def enslave(self, port: str, master: str) -> None:
        """port joins bridge master and goes up (`ip link set PORT master M up`)."""
        what = f"add {port} to {master}"
        self._do(what, self.ipr.link, "set", index=self._index(port, what),
                 master=self._index(master, what), state="up")

    def delete_link(self, ifname: str, check: bool = True) -> None:
        """Delete the interface (a veth takes its peer along); check=False:
        quiet when it is gone or cannot be deleted."""
        try:
            self._do(f"delete {ifname}", self.ipr.link, "del",
                     index=self._index(ifname, f"delete {ifname}"))
        except GlasswingError:
            if check:
                raise

    # ------------------------------------------------------------ addresses

    def add_address(self, ifname: str, cidr: str) -> None:
        """`ip addr add CIDR dev IFNAME`: local and peer address the same, no broadcast. An
        IPv6 one is `nodad`: usable at once, no duplicate address detection first (the
        mesh hands out every address itself)."""
        what = f"add address {cidr} to {ifname}"
        address, prefixlen = cidr.split("/")
        extra = {"family": socket.AF_INET6, "flags": IFA_F_NODAD} if ":" in address else {}
        self._do(what, self.ipr.addr, "add", index=self._index(ifname, what),
                 address=address, local=address, prefixlen=int(prefixlen), **extra)

    def delete_address(self, ifname: str, cidr: str, check: bool = True) -> None:
        """`ip addr del CIDR dev IFNAME`; check=False: quiet when it is not there."""
        what = f"delete address {cidr} from {ifname}"
        address, prefixlen = cidr.split("/")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            self._do(what, self.ipr.addr, "del", index=self._index(ifname, what),
                     address=address, prefixlen=int(prefixlen), family=family)
        except GlasswingError:
            if check:
                raise

    # ------------------------------------------------------------ routes

    def add_route(self, dst: str, dev: str = None, via: str = None, src: str = None,
                  replace: bool = False) -> None:
        """A unicast route in the main table, as `ip route add DST [via GW] [dev DEV]
        [src SRC]` makes it (scope link when there is no gateway); IPv4 or IPv6 by DST."""
        what = f"add route {dst}" + (f" via {via}" if via else "") + (f" dev {dev}" if dev else "")
        spec = {"dst": _prefix(dst), "family": _family(dst), "table": RT_TABLE_MAIN, "proto": RTPROT_BOOT,
                "type": "unicast", "scope": RT_SCOPE_UNIVERSE if via else RT_SCOPE_LINK}
        if dev:
            spec["oif"] = self._index(dev, what)
        if via:
            spec["gateway"] = via
        if src:
            spec["prefsrc"] = src
        self._do(what, self.ipr.route, "replace" if replace else "add", **spec)

    def add_blackhole(self, dst: str, replace: bool = False) -> None:
        """`ip route add|replace blackhole DST`."""
        self._do(f"add blackhole route {dst}", self.ipr.route, "replace" if replace else "add",
                 dst=_prefix(dst), family=_family(dst), table=RT_TABLE_MAIN, proto=RTPROT_BOOT, type="blackhole",
                 scope=RT_SCOPE_UNIVERSE)

    def delete_route(self, dst: str, blackhole: bool = False, check: bool = True) -> None:
        """`ip route del [blackhole] DST`: any unicast route to DST in the main
        table (or the blackhole one); check=False: quiet when there is none."""
        spec = {"dst": _prefix(dst), "family": _family(dst), "table": RT_TABLE_MAIN, "proto": 0}
        spec.update({"type": "blackhole", "scope": RT_SCOPE_UNIVERSE} if blackhole else
                    {"type": 0, "scope": RT_SCOPE_NOWHERE})
        try:
            self._do(f"delete route {'blackhole ' if blackhole else ''}{dst}", self.ipr.route, "del", **spec)
        except GlasswingError:
            if check:
                raise


def _family(dst: str) -> int:
    return socket.AF_INET6 if ":" in dst else socket.AF_INET


def _prefix(dst: str) -> str:
    """A route destination with its length: an address alone is a /32 (IPv4) or /128 (IPv6)."""
    return dst if "/" in dst else f"{dst}/{128 if ':' in dst else 32}"


def delete_link(ns: str, ifname: str) -> None:
    """Best effort, for undo and removal: delete ifname in ns if both are there."""
    try:
        with opened(ns) as nl:
            nl.delete_link(ifname, check=False)
    except GlasswingError:
        pass


def delete_route(ns: str, dst: str, blackhole: bool = False) -> None:
    """Best effort, for undo and removal: delete the route to dst in ns if it is there."""
    try:
        with opened(ns) as nl:
            nl.delete_route(dst, blackhole=blackhole, check=False)
    except GlasswingError:
        pass
