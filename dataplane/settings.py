"""Constants and paths, in one place: ports, marks, address ranges, where state lives.

Environment variables (read here only):
- GLASSWING_STORE: the store, file:///DIR (embedded) or etcd://HOST:PORT
  (default: the embedded store in GLASSWING_STATE_DIR).
- GLASSWING_STATE_DIR: directory of the embedded store (default /var/lib/glasswing).
- GLASSWING_RUN_DIR: pidfiles, admin sockets and logs (default /run/glasswing).
- GLASSWING_NODE: node a command acts on (default "local", the host itself).
"""
import ipaddress
import os

# the checkout (or installed tree) this package runs from: bpf/ and ext/ sources live beside it
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

POD_RANGE = ipaddress.IPv4Network("198.18.0.0/16")
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")  # node addresses of simulated nodes
SERVICE_RANGE = ipaddress.IPv4Network("198.19.0.0/16")
MESH_RANGE = ipaddress.IPv4Network("198.18.0.0/15")  # the only routes a pod gets

OUTBOUND_IP = "127.0.0.1"
OUTBOUND_PORT = 15001
TUNNEL_PORT = 15008
DNS_PORT = 15053  # UDP, the forwarder's resolver in each pod's namespace
INBOUND_SOURCE = "127.0.0.6"  # source of connections the forwarder makes into a pod
FORWARDER_MARK = 0x6777  # SO_MARK on every forwarder socket; connect4 leaves these alone

LOCAL_NODE = "local"
BPFFS = "/sys/fs/bpf"
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
