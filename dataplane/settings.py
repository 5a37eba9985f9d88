"""Constants and paths, in one place: ports, marks, address ranges, where state lives.

Environment variables (read here only, each by the function named, when it is called;
tests/unit/test_env_reads.py fails when another module reads the environment):
- GLASSWING_STORE: the store, file:///DIR (embedded) or etcd://HOST:PORT
  (default: the embedded store in GLASSWING_STATE_DIR). store_url()
- GLASSWING_STATE_DIR: directory of the embedded store (default /var/lib/glasswing). state_dir()
- GLASSWING_RUN_DIR: pidfiles, admin sockets and logs (default /run/glasswing). run_dir()
- GLASSWING_NODE: node a command acts on (default "local", the host itself). node_name()
- GLASSWING_RELAY: the relay of forwarders started without --relay (default: the built-in
  one, dataplane/relay/modes.py). relay_mode()
- GLASSWING_PUMP: auto, cython or python, which twin of the byte pumps and the relay engine
  runs (dataplane/relay/pump.py reads it once, at import). pump_choice()
- GLASSWING_KERNEL_RELAY: on or off overrides the kernel check of the kernel relay
  (dataplane/kernel/relay_gate.py). kernel_relay_override()

Handing the whole environment to a child process (dict(os.environ, ...)) is not a read.
"""
import ipaddress
import os

# the checkout (or installed tree) this package runs from: bpf/ and ext/ sources live beside it
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

POD_RANGE = ipaddress.IPv4Network("198.18.0.0/16")
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")  # node addresses of simulated nodes
SERVICE_RANGE = ipaddress.IPv4Network("198.19.0.0/16")
MESH_RANGE = ipaddress.IPv4Network("198.18.0.0/15")  # the only routes a pod gets
# IPv6 (RFC 5180 benchmarking range): a pod's IPv6 address ends in its IPv4 address
# (198.18.1.5 -> 2001:2::c612:105); services get VIPs from their own /64, blackholed like the IPv4 one.
POD_RANGE6 = ipaddress.IPv6Network("2001:2::/96")
SERVICE_RANGE6 = ipaddress.IPv6Network("2001:2:0:ffff::/64")
MESH_RANGE6 = ipaddress.IPv6Network("2001:2::/48")  # the only IPv6 routes a pod gets

OUTBOUND_IP = "127.0.0.1"
OUTBOUND_IP6 = "::1"  # the forwarder's listeners for native IPv6 sockets (IPV6_V6ONLY), same ports
OUTBOUND_PORT = 15001
TUNNEL_PORT = 15008
DNS_PORT = 15053  # UDP, the forwarder's resolver in each pod's namespace
INBOUND_SOURCE = "127.0.0.6"  # source of connections the forwarder makes into a pod
INBOUND_SOURCE6 = "::6"  # the same, to an IPv6 endpoint
FORWARDER_MARK = 0x6777  # SO_MARK on every forwarder socket; connect4 leaves these alone

LOCAL_NODE = "local"
PIN_ROOT = "/sys/fs/bpf/glasswing"

CONNECT_TIMEOUT = 3.0  # seconds to reach an endpoint or a peer forwarder
PREAMBLE_TIMEOUT = 3.0  # a tunnel stream must send its whole StreamOpen within this


def state_dir() -> str:
    return os.environ.get("GLASSWING_STATE_DIR", "/var/lib/glasswing")


def store_url() -> str:
    return os.environ.get("GLASSWING_STORE") or "file://" + state_dir()


LEASE_TTL = 10  # seconds a dead node's endpoints outlive it


def run_dir() -> str:
    return os.environ.get("GLASSWING_RUN_DIR", "/run/glasswing")


def node_name() -> str:
    return os.environ.get("GLASSWING_NODE", LOCAL_NODE)


def relay_mode() -> str:
    """GLASSWING_RELAY, stripped; "" when unset or empty (dataplane.relay.modes.default() then
    picks the built-in relay). Not checked here: modes.check() does."""
    return os.environ.get("GLASSWING_RELAY", "").strip()


PUMP_CHOICES = ("auto", "cython", "python")


def pump_choice() -> str:
    """GLASSWING_PUMP, lower-cased: "auto" (also when unset or empty), "cython" or "python".
    ValueError for anything else."""
    choice = os.environ.get("GLASSWING_PUMP", "").strip().lower() or "auto"
    if choice not in PUMP_CHOICES:
        raise ValueError(f"GLASSWING_PUMP must be auto, cython or python, not {choice!r}")
    return choice


def kernel_relay_override() -> str:
    """"on" or "off" from GLASSWING_KERNEL_RELAY, else "" (any other value is ignored)."""
    force = os.environ.get("GLASSWING_KERNEL_RELAY", "").strip().lower()
    return force if force in ("on", "off") else ""
