"""Per-service traffic policy state, built from the TrafficPolicy objects of a
store Snapshot (dataplane/store/snapshot.py): what
the forwarder asks on every new outbound connection (admit it? which
endpoint? how long to wait, retry where?) and tells back (connected,
failed, closed). Sans-IO: the clock and the random source are injected.

Where state lives:
  ServicePolicy (one per service)     token bucket, circuit breaker, retry budget
  PortPolicy (one per service port)   balancer (inside zone preference), outlier detector
  Attempt (one per downstream conn)   its retry sequence, its breaker slot, its pick
State is made on a service's first connection. Policies.update() runs after
every catalog rebuild and keeps what exists, changing it in place: a part is
replaced only when the setting it was built from changed (a new
load_balancer gives a new balancer, new outlier numbers a new detector), and
an endpoint set change only makes the detector forget endpoints that left.
So ejections, breaker counts and bucket tokens survive unrelated store
changes. An Attempt holds the balancer it picked from, so a pick is always
released to the balancer that counted it.

On HTTP ports (node.mesh_http.MeshUpstreams, http.proxy.ServicePolicy) the same
state is used per request instead of per connection: the bucket answers 429,
the breaker's max_connections caps requests in flight (503), the budget
bounds the route's retries, and the port's balancer and outlier detector
pick endpoints and count failed tries (5xx and timeouts included).

Defaults, without a TrafficPolicy for the service: round robin, a connect
timeout of MeshSettings.default_connect_timeout_ms (else settings.CONNECT_TIMEOUT),
one retry of a refused, timed-out or unreachable connect on another endpoint,
no circuit breaker, no rate limit, no outlier detection, no idle timeout.
Every retry waits a full-jitter backoff (25 ms doubling, at most 250 ms) and
spends from a per-service retry budget (10 retries/s plus 20% of connections).
"""
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from dataplane.policy.backoff import Backoff
from dataplane.policy.circuit_breaker import CircuitBreaker
from dataplane.policy.connect_retry import RETRIABLE, ConnectRetry
from dataplane.policy.lb.factory import make_balancer
from dataplane.policy.lb.zone import ZoneAware
from dataplane.policy.outlier import OutlierDetector
from dataplane.policy.retry_budget import RetryBudget
from dataplane.settings import CONNECT_TIMEOUT
from dataplane.policy.token_bucket import TokenBucket

DEFAULT_RETRIES = 1
BACKOFF_BASE, BACKOFF_CAP = 0.025, 0.25  # seconds, as Envoy's retry back-off defaults


@dataclass(frozen=True)
class Settings:
    """One service's TrafficPolicySpec in the units the forwarder uses."""
    load_balancer: str = "round_robin"
    connect_timeout: float = CONNECT_TIMEOUT   # seconds
    idle_timeout: float = 0.0                  # seconds; 0: none
    max_connections: int = 0                   # 0: no limit
    max_pending: int = 0                       # 0: no limit
    retries: int = DEFAULT_RETRIES
    outlier: Optional[tuple] = None            # (consecutive failures, base ejection s, max percent)
    rate_limit: Optional[tuple] = None         # (tokens per second, burst)


def settings_from(spec=None, default_connect_timeout: float = CONNECT_TIMEOUT) -> Settings:
    """Settings for a TrafficPolicySpec (store/snapshot.py), or the defaults for None. The
    schema filled the documented defaults before the spec was stored."""
    if spec is None:
        return Settings(connect_timeout=default_connect_timeout)
    od, rl = spec.outlier_detection, spec.rate_limit
    return Settings(
        load_balancer=spec.load_balancer or "round_robin",
        connect_timeout=spec.connect_timeout_ms / 1000 if spec.connect_timeout_ms else default_connect_timeout,
        idle_timeout=spec.idle_timeout_ms / 1000,
        max_connections=spec.max_connections, max_pending=spec.max_pending,
        retries=spec.retry_attempts,
        outlier=(od.consecutive_failures or 5, (od.base_ejection_ms or 30000) / 1000, od.max_ejection_percent)
        if od is not None else None,
        rate_limit=(rl.tokens_per_second, rl.burst or rl.tokens_per_second)
        if rl is not None and rl.tokens_per_second else None)


def specs_by_service(snapshot) -> dict:
    """{service key: TrafficPolicySpec} of a store Snapshot. A policy names a
    service of its own namespace; when two name the same one, the first by key wins."""
    out = {}
    for pkey in sorted(snapshot.traffic_policies):
        policy = snapshot.traffic_policies[pkey]
        ns = pkey.split("/", 1)[0]
        out.setdefault(f"{ns}/{policy.spec.service}", policy.spec)
    return out


def default_connect_timeout(snapshot) -> float:
    """MeshSettings.default_connect_timeout_ms of a store Snapshot, in seconds, or settings'."""
    ms = snapshot.mesh.default_connect_timeout_ms if snapshot.mesh is not None else 0
    return ms / 1000 if ms else CONNECT_TIMEOUT


class ServicePolicy:
    def __init__(self, name: str, settings: Settings, *, clock: Callable[[], float]):
        self.name = name
        self.settings = settings
        self._clock = clock
        self.breaker = CircuitBreaker(settings.max_connections, settings.max_pending)
        self.bucket = self._bucket(settings)
        self.budget = RetryBudget(clock=clock)
        self.ports: dict = {}  # service port -> PortPolicy

    def _bucket(self, s: Settings):
        return TokenBucket(*s.rate_limit, clock=self._clock) if s.rate_limit else None

    def configure(self, settings: Settings) -> None:
        if settings == self.settings:
            return
        if settings.rate_limit != self.settings.rate_limit:
            self.bucket = self._bucket(settings)
        # limits change in place: connections open now still count against them
        self.breaker.max_connections = settings.max_connections
        self.breaker.max_pending = settings.max_pending
        self.settings = settings
        for p in self.ports.values():
            p.configure(settings)

    def admit(self) -> Optional[str]:
        """None: a new connection may go on, holding a breaker slot; else the
        reason it is refused: rate_limit, max_connections or max_pending. The
        bucket is asked first, as a rate-limit filter sits before the proxy."""
        if self.bucket is not None and not self.bucket.try_take():
            return "rate_limit"
        return self.breaker.try_acquire()


class PortPolicy:
    def __init__(self, service: ServicePolicy, port: int, *, clock: Callable[[], float],
                 rng: random.Random, local_zone: str = ""):
        self.service, self.port = service, port
        self._clock, self._rng = clock, rng
        self.settings = None
        self.endpoints: tuple = ()
        self.zone = ZoneAware(None, local_zone, is_healthy=self.in_service)
        self.outlier = None
        self.configure(service.settings)

    def configure(self, settings: Settings) -> None:
        old = self.settings
        if old is None or settings.load_balancer != old.load_balancer:
            self.zone.inner = make_balancer(settings.load_balancer, rng=self._rng)
        if old is None or settings.outlier != old.outlier:
            self.outlier = OutlierDetector(clock=self._clock, consecutive_failures=settings.outlier[0],
                                           base_ejection=settings.outlier[1],
                                           max_ejection_percent=settings.outlier[2]) \
                if settings.outlier else None
        self.settings = settings

    @property
    def balancer(self):
        return self.zone.inner

    def set_endpoints(self, endpoints: Sequence) -> None:
        eps = tuple(endpoints)
        if eps != self.endpoints and self.outlier is not None:
            self.outlier.retain([e.addr for e in eps])
        self.endpoints = eps

    def in_service(self, ep) -> bool:
        """Not ejected by outlier detection."""
        return self.outlier is None or not self.outlier.is_ejected(ep.addr)

    def ejected(self) -> int:
        return self.outlier.ejected_count() if self.outlier is not None else 0


class Attempt:
    """One downstream connection's use of its service's policy, from
    admission (ServicePolicy.admit() said None) to close(). The caller:

        a = Attempt(port_policy, endpoints, key)
        while (ep := a.pick()) is not None:
            try: connect to ep within a.timeout; a.connected(); relay; break
            except failure: delay = a.failed(reason); if delay is None: break; sleep(delay)
        ...
        a.close()    # exactly once, whatever happened; idempotent
    """

    def __init__(self, port: PortPolicy, endpoints: Sequence, key=None, *, rng: random.Random):
        self.port, self.service = port, port.service
        self.endpoints = endpoints  # the catalog's list, never changed after it is built
        self.key = key
        self.timeout = port.settings.connect_timeout
        self._zone = port.zone          # picks are released where they were counted
        self._balancer = port.zone.inner
        self.retry = ConnectRetry(port.settings.retries, Backoff(BACKOFF_BASE, BACKOFF_CAP, rng=rng),
                                  self.service.budget)
        self.service.budget.record_request()
        self.endpoint = None   # the current pick
        self.state = "pending"  # -> open -> closed, or pending -> closed
        self.ejected = False    # the last failure ejected its endpoint
        self.retries = 0

    def pick(self):
        """The endpoint to try next; None when the service has none. Ejected
        endpoints are left out unless every candidate is ejected (then all
        are candidates: some service beats none)."""
        cands = self.retry.untried(self.endpoints) if self.retry.tried else self.endpoints
        if not cands:
            self.endpoint = None
            return None
        if self.port.outlier is not None or self._zone.local_zone:  # else every one is a candidate
            cands = self._zone.candidates(cands) or cands
        self.endpoint = self._balancer.pick(cands, key=self.key)
        return self.endpoint

    def connected(self) -> None:
        if self.port.outlier is not None:
            self.port.outlier.success(self.endpoint.addr)
        self.service.breaker.connected()
        self.state = "open"

    def failed(self, reason: str) -> Optional[float]:
        """The connect to the current pick failed for reason (connect_retry
        RETRIABLE ones count towards outlier detection); the seconds to wait
        before picking again, or None to give up (then close())."""
        ep, self.endpoint = self.endpoint, None
        self._balancer.release(ep)
        self.ejected = False
        if reason in RETRIABLE and self.port.outlier is not None:
            self.ejected = self.port.outlier.failure(ep.addr, total=len(self.port.endpoints or self.endpoints))
        delay = self.retry.failed(ep, reason)
        if delay is not None:
            self.retries += 1
        return delay

    def close(self) -> None:
        if self.state == "closed":
            return
        if self.endpoint is not None:
            self._balancer.release(self.endpoint)
        self.service.breaker.release(connected=self.state == "open")
        self.state = "closed"


class Policies:
    """Every service's policy state on one forwarder. State is made on first
    use (the first connection to a service port), so a big registry costs
    nothing for services this node's pods never call."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, rng: random.Random = None,
                 local_zone: str = ""):
        self.clock = clock
        self.rng = rng or random.Random()
        self.local_zone = local_zone
        self.services: dict = {}   # service key -> ServicePolicy, for services used so far
        self.default = Settings()
        self.explicit: dict = {}   # service key -> Settings, for services with a TrafficPolicy
        self._catalog = None

    def update(self, catalog, snapshot, local_zone: str = None) -> None:
        """Bring the state in line with a new catalog and the store Snapshot it was built from."""
        if local_zone is not None:
            self.local_zone = local_zone
        self.default = settings_from(None, default_connect_timeout(snapshot))
        self.explicit = {key: settings_from(spec, self.default.connect_timeout)
                         for key, spec in specs_by_service(snapshot).items()}
        self._catalog = catalog
        present = {key for key, _port in catalog.by_name}
        keep = {}
        for key, svc in self.services.items():
            if key not in present:
                continue
            svc.configure(self.settings(key))
            for port in list(svc.ports):
                sp = catalog.by_name.get((key, port))
                if sp is None:
                    del svc.ports[port]
                    continue
                svc.ports[port].zone.local_zone = self.local_zone
                svc.ports[port].set_endpoints(sp.endpoints)
            keep[key] = svc
        self.services = keep

    def settings(self, service: str) -> Settings:
        return self.explicit.get(service, self.default)

    def port(self, service: str, port: int) -> PortPolicy:
        svc = self.services.get(service)
        if svc is None:
            svc = self.services[service] = ServicePolicy(service, self.settings(service), clock=self.clock)
        pp = svc.ports.get(port)
        if pp is None:
            pp = svc.ports[port] = PortPolicy(svc, port, clock=self.clock, rng=self.rng,
                                              local_zone=self.local_zone)
            sp = self._catalog.by_name.get((service, port)) if self._catalog is not None else None
            pp.set_endpoints(sp.endpoints if sp is not None else ())
        return pp

    def attempt(self, port: PortPolicy, endpoints: Sequence, key=None) -> Attempt:
        return Attempt(port, endpoints, key, rng=self.rng)
