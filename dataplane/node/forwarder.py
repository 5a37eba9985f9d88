"""The node forwarder: one process per node serving every pod on it.

Forwarder owns, and undoes in reverse on stop (safe on a partial start): its own cgroup, the
hook programs and their cgroup attachments, the pinned maps, the tunnel listener on
NODE_IP:15008, in each pod's namespace a listener on 127.0.0.1:15001 and a DNS socket on
:15053 (and, where the namespace has IPv6, the same on [::1] for native IPv6 sockets), the
store lease (through the publisher), the admin socket and the pidfile. The rest
is done by collaborators it makes and wires together, each given what it needs:

  reconcile.Reconciler    the store watch; the document turned into catalog, policies,
                          routes, DNS settings and maps, in one place
  publisher.Publisher     this node's endpoints in the store, the lease, health checkers
  outbound.Outbound       app connections from 15001 at L4 (mesh_http.MeshHttp for HTTP)
  inbound.Inbound         tunnel streams from peer forwarders on 15008
  dialer.MeshDialer       how a picked endpoint is reached: direct, in-pod or the tunnel
  relays.RelaySink        the open relays and what carries them (relays.sweep: idle ones)
  accept.Acceptor         the accept loops
  commands.AdminCommands  the admin socket's commands and the status answer
  counters.Counters       the counters they share (status "stats")

process.run() runs a Forwarder as the node's forwarder process; paths.cleanup_stale()
undoes what a killed one left.
"""
import asyncio
import errno
import logging
import os
import socket

from dataplane.dns import names as dns_names
from dataplane.dns.resolver import Resolver
from dataplane.host import cgroups
from dataplane.host import netns
from dataplane.host import topology
from dataplane.host.sockets import listener, marked_socket, udp_socket
from dataplane.kernel import maps as bpf_maps
from dataplane.kernel.map_sync import MapState
from dataplane.kernel.programs import Programs
from dataplane.node.accept import Acceptor
from dataplane.node.admin import serve as serve_admin
from dataplane.node.commands import AdminCommands
from dataplane.node.counters import Counters
from dataplane.node.dialer import MeshDialer
from dataplane.node.inbound import Inbound
from dataplane.node.mesh_http import MeshHttp
from dataplane.node.outbound import Outbound
from dataplane.node.paths import node_paths
from dataplane.node.publisher import Publisher
from dataplane.node.reconcile import Reconciler
from dataplane.node.relays import RelaySink, sweep
from dataplane.policy.state import Policies
from dataplane.relay import modes as relay_modes
from dataplane.settings import DNS_PORT, OUTBOUND_IP, OUTBOUND_IP6, OUTBOUND_PORT, TUNNEL_PORT
from dataplane.store.registry import Registry

log = logging.getLogger("glasswing.forwarder")


class PodState:
    """What the forwarder holds for one pod on its node."""

    def __init__(self, name, rec):
        self.name, self.rec = name, rec
        self.ns_fd = netns.open_fd(rec["netns"])
        self.cgroup = rec["cgroup"]
        self.cgroup_id = cgroups.cgroup_id(self.cgroup)
        self.namespace = rec.get("namespace", "default")
        self.listeners = []  # outbound: 127.0.0.1:15001, and [::1]:15001 where IPv6 is on
        self.dns_socks = []  # the resolver's: 127.0.0.1:15053, and [::1]:15053 where IPv6 is on
        self.tasks = []      # their accept loops and resolver start-ups
        self.dns = []        # the resolver's transports, once serving (they own dns_socks)

    def close(self):
        for t in self.tasks:
            t.cancel()
        for s in self.listeners:
            s.close()
        for t in self.dns:
            t.close()
        for s in self.dns_socks:
            s.close()  # a no-op for one its transport closed
        os.close(self.ns_fd)


class Forwarder:
    def __init__(self, store: Registry, node: str, run_root: str, home_fd: int,
                 relay: str = relay_modes.BUILT_IN_DEFAULT):
        self.store, self.node, self.home_fd = store, node, home_fd
        doc = store.read()
        self.cluster = doc["cluster"]
        self.paths = node_paths(run_root, self.cluster, node)
        self.cgroup = topology.forwarder_cgroup(self.cluster, node)
        self.programs = self.maps = self.tunnel = None
        self.pods = {}  # name -> PodState of the pods attached here
        self.tasks = set()
        self.servers = []
        self.stopping = asyncio.Event()
        self.stats = Counters()
        self.errors = {}
        self.policies = Policies()
        self.resolver = Resolver(self._dns_lookup, socket_factory=self._upstream_socket)
        self.relays = RelaySink(relay, kernel=lambda: self.programs.relay if self.programs else None,
                                on_gone=lambda r: self.outbound.relay_gone(r))
        self.dialer = MeshDialer(node, self.cluster, home_fd, self.pods,
                                 peer_ip=lambda n: self.config.doc["nodes"][n]["ip"])
        attached = self.pods.__contains__
        self.publisher = Publisher(kv=store.kv, node=node, doc=lambda: self.config.doc, attached=attached,
                                   connect_local=self.dialer.connect_local, errors=self.errors,
                                   on_health=lambda: self.config.health_changed())
        self.config = Reconciler(store=store, node=node, doc=doc, policies=self.policies,
                                 resolver=self.resolver, sync_pods=self._sync_pods,
                                 cgroup_ids=lambda: {n: p.cgroup_id for n, p in self.pods.items()},
                                 publish=self.publisher.publish, errors=self.errors)

        def catalog():
            return self.config.catalog
        self.http = MeshHttp(catalog=catalog, policies=self.policies, dialer=self.dialer,
                             relay=self.relays.relay, http_policy=self.config.http_policy,
                             attached=attached, counters=self.stats)
        self.outbound = Outbound(catalog=catalog, policies=self.policies, dialer=self.dialer,
                                 relay=self.relays.relay, http=self.http.serve, counters=self.stats)
        self.inbound = Inbound(node=node, catalog=catalog, policies=self.policies,
                               connect_local=self.dialer.connect_local, relay=self.relays.relay,
                               counters=self.stats)
        self.acceptor = Acceptor(self._spawn, self.stats, self.errors)
        self.admin = AdminCommands(node=node, sync=self.config.caught_up,
                                   shutdown=self.stopping.set, relays=self.relays,
                                   parts=[self.config.status, self.publisher.status, self.relays.status,
                                          self.outbound.status, self._status],
                                   counters=self.stats, errors=self.errors)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self):
        os.makedirs(self.paths["run"], exist_ok=True)
        cgroups.ensure(self.cgroup)
        cgroups.join(self.cgroup)
        self.programs = Programs(self.paths["pins"])
        self.programs.load()
        self.maps = self.config.maps = MapState(self.paths["pins"])
        self.maps.set_config(cgroups.cgroup_id(self.cgroup))
        self.programs.attach(self.cgroup, "forwarder")
        node = self.config.doc["nodes"].get(self.node) or {}
        tunnel_ip = node.get("ip") or "127.0.0.1"
        self.tunnel = listener(tunnel_ip, TUNNEL_PORT)
        self._spawn(self.acceptor.loop(self.tunnel, self.inbound.serve))
        self.publisher.grant()
        self.config.reconcile(self.store.read())
        self.servers.append(await serve_admin(self.paths["admin"], self.admin.handle))
        self._spawn(self.config.watch())
        self._spawn(self.publisher.keepalive())
        self._spawn(sweep(self.relays, self.policies, self.stats, self.outbound.release_ended))
        with open(self.paths["pidfile"], "w") as f:
            f.write(f"{os.getpid()}\n")
        log.info("forwarder for node %s ready (tunnel %s:%d)", self.node, tunnel_ip, TUNNEL_PORT)

    async def stop(self) -> None:
        """Undo everything start made, in reverse; safe on a partial start."""
        for s in self.servers:
            s.close()
        for t in list(self.tasks):
            t.cancel()
        if self.tunnel:
            self.tunnel.close()
        self.relays.close()
        self.http.close()
        self.publisher.stop_checkers()
        for name in list(self.pods):
            self._drop_pod(name)
        self.resolver.close()
        self.publisher.revoke()
        if self.programs:
            self.programs.close()
        if self.maps:
            self.maps.close()
        bpf_maps.unpin_all(self.paths["pins"])
        try:
            cgroups.join(cgroups.cgroup2_root())
            cgroups.remove(self.cgroup, kill=False)
            os.rmdir(os.path.dirname(self.cgroup))
        except OSError:
            pass
        for p in (self.paths["pidfile"], self.paths["admin"]):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def _spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    # ------------------------------------------------------------ pods

    def _sync_pods(self, want: dict) -> None:
        """Attach the pods of want ({name: record}) not attached yet, detach those gone or
        moved to another cgroup; one pod that fails to attach is an error of its own."""
        for name in [n for n in self.pods if n not in want or want[n]["cgroup"] != self.pods[n].cgroup]:
            self._drop_pod(name)
        for name, rec in want.items():
            if name not in self.pods:
                try:
                    self._add_pod(name, rec)
                    self.errors.pop(f"pod {name}", None)
                except Exception as e:  # noqa: BLE001 - one broken pod must not stop the others
                    self.errors[f"pod {name}"] = str(e)
                    log.error("pod %s: %s", name, e)
            else:
                self.pods[name].rec = rec

    def _add_pod(self, name, rec):
        pod = PodState(name, rec)
        try:
            pod.listeners.append(listener(OUTBOUND_IP, OUTBOUND_PORT, pod.ns_fd, self.home_fd))
            pod.dns_socks.append(udp_socket(OUTBOUND_IP, DNS_PORT, pod.ns_fd, self.home_fd))
            self._add_ipv6_sockets(pod)
            self.programs.attach(pod.cgroup, "pod")
        except BaseException:
            pod.close()
            raise
        for lsock in pod.listeners:
            pod.tasks.append(self._spawn(self.acceptor.loop(lsock, lambda c: self.outbound.serve(pod, c))))
        for sock in pod.dns_socks:
            pod.tasks.append(self._spawn(self._serve_dns(pod, sock)))
        self.pods[name] = pod

    def _add_ipv6_sockets(self, pod):
        """The listener and resolver socket on [::1] that connect6 and sendmsg6 send native
        IPv6 sockets to. A namespace without IPv6 (no ::1: disabled, or no IPv6 in the
        kernel) gets none, which is no error (doctor says whether IPv6 is on): its native IPv6
        connects to a VIP then fail open or closed in the kernel, as with the forwarder down."""
        try:
            pod.listeners.append(listener(OUTBOUND_IP6, OUTBOUND_PORT, pod.ns_fd, self.home_fd))
            pod.dns_socks.append(udp_socket(OUTBOUND_IP6, DNS_PORT, pod.ns_fd, self.home_fd))
        except OSError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise
            log.warning("pod %s: no IPv6 listeners on [%s]: %s", pod.name, OUTBOUND_IP6, e.strerror)

    async def _serve_dns(self, pod, sock):
        # queries that arrive before this runs wait in the bound socket
        pod.dns.append(await self.resolver.serve(sock, pod.name))

    def _drop_pod(self, name):
        pod = self.pods.pop(name)
        self.programs.detach(pod.cgroup)
        pod.close()

    # ------------------------------------------------------------ dns

    def _dns_lookup(self, pod: str, name: str):
        ps = self.pods.get(pod)
        return dns_names.classify(name, ps.namespace if ps else "default", self.config.dns_suffix(),
                                  self.config.catalog.dns_names)

    def _upstream_socket(self):
        """For DNS forwarded upstream: made in the node's namespace, marked."""
        return marked_socket(kind=socket.SOCK_DGRAM)

    def _status(self) -> dict:
        return {"dns": self.resolver.counters, "pods": sorted(self.pods), "http": self.http.status()}
