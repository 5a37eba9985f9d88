"""The L7 routing decision for one HTTP request, without I/O.

Pure functions and small classes the forwarder composes for a request on an HTTP port:

    RouteTable(spec).match(request)        first RouteRule whose match fits, as a CompiledRule
    choose_subset(rule, rng)               the weighted split: which endpoint labels to use
    subset_filter(endpoints, subset)       endpoints carrying those labels
    apply_set_headers(headers, rule)       the rule's header rewrite
    retryable(method, outcome, policy)     may this failure be retried under the policy?
    FaultInjection.decide(rng)             delay and abort faults for a percentage of requests
    local_reply(status, text, reason)      a canned response (503 no endpoint, 429, 400, 504...)

The retry budget and the local rate limit (answer 429 with local_reply(429, ..., RATE_LIMITED)
when it refuses) are dataplane/policy/retry_budget.py and dataplane/policy/token_bucket.py.

Randomness is always injected (a random.Random), so tests are exact.
The RouteSpecs come from the store Snapshot (dataplane/store/snapshot.py), validated with
defaults filled; this module reads their fields and imports no protobuf module.

Matching (RouteMatch): every field given must fit, an empty match fits everything.
  host      the request's Host (or the authority of an absolute-form target), lowercased, port
            and trailing dot removed, equal to the rule's host; "*.example.com" matches one or
            more labels in front of ".example.com", not "example.com" itself.
  path      the target's path, query string removed, not percent-decoded or normalised (so
            "/a/../b" and "/%61" are matched as sent): path_exact equal, path_prefix a plain
            string prefix, path_regex matching the whole path (re.fullmatch, compiled once).
  method    equal (methods are case-sensitive).
  headers   for each name (case-insensitive) some field of that name has exactly that value
            (case-sensitive, surrounding whitespace already stripped by the parser).
"""

import http
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from dataplane.http.h1 import IDEMPOTENT_METHODS, get_all_headers, get_header
from dataplane.store.snapshot import RetryPolicy, RouteMatch

# set_headers may not touch the framing or the connection: a rewrite that set Content-Length or
# Transfer-Encoding would desynchronise us and the upstream (request smuggling).
UNSETTABLE_HEADERS = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te",
    "upgrade", "trailer",
})
RETRIABLE_4XX = frozenset({409})
CONNECT_FAILURE = "connect-failure"  # the upstream could not be reached
RESET = "reset"  # the upstream connection broke before a complete response head

# x-glasswing-reason values of local replies
NO_HEALTHY_ENDPOINT = "no_healthy_endpoint"
NO_ROUTE = "no_route"
RATE_LIMITED = "rate_limited"
FAULT_ABORT = "fault_abort"
REQUEST_TIMEOUT = "upstream_timeout"
UPSTREAM_ERROR = "upstream_error"
BAD_REQUEST = "bad_request"

# Statuses after which the client connection is closed by default (it is in an unknown state).
_CLOSING_STATUSES = frozenset({400, 408, 413, 414, 431, 501, 505})


# --- matching -----------------------------------------------------------------------------


def _text(b):
    return b.decode("latin-1") if isinstance(b, (bytes, bytearray)) else b


def request_host(request) -> str:
    """Lowercase host of a Request: authority of an absolute-form target, else Host; no port."""
    target = _text(request.target)
    host = None
    if "://" in target[:16]:
        host = urlsplit(target).netloc.rpartition("@")[2]
    if not host:
        host = _text(get_header(request.headers, b"host", b""))
    return normalise_host(host)


def normalise_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal, "[::1]:8080"
        return host[:host.find("]") + 1] if "]" in host else host
    host = host.rpartition(":")[0] if ":" in host else host
    return host.rstrip(".")


def request_path(request) -> str:
    """The path of a Request's target without the query string ("" for "*" and CONNECT)."""
    target = _text(request.target)
    if "://" in target[:16]:
        path = urlsplit(target).path or "/"
        return path
    if not target.startswith("/"):
        return ""
    return target.split("?", 1)[0].split("#", 1)[0]


@dataclass(frozen=True)
class CompiledRule:
    index: int  # position in RouteSpec.rules
    rule: object  # the snapshot's RouteRule
    split: tuple  # ((subset dict, weight), ...); empty: every endpoint
    timeout_s: float  # whole request, None: none
    per_try_timeout_s: float  # None: none
    retries: int  # retries after the first try (RetryPolicy.attempts), 0: none
    retry_on: frozenset  # RetryPolicy.on
    set_headers: tuple  # ((name bytes, value bytes), ...) without UNSETTABLE_HEADERS
    ignored_headers: tuple  # set_headers names refused (see UNSETTABLE_HEADERS): worth a warning
    host: str = None
    host_suffix: str = None  # "*.example.com" -> ".example.com"
    path_exact: str = None
    path_prefix: str = None
    path_regex: object = None  # compiled
    method: bytes = None
    headers: tuple = ()  # ((lowercase name bytes, value bytes), ...)
    fault: object = None  # FaultInjection from RouteRule.fault; None: none
    retry_non_idempotent: bool = False  # RetryPolicy.retry_non_idempotent: every method "marked safe"

    def matches(self, method, host, path, headers) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.host is not None and host != self.host:
            return False
        if self.host_suffix is not None and not (host.endswith(self.host_suffix)
                                                 and len(host) > len(self.host_suffix)):
            return False
        if self.path_exact is not None and path != self.path_exact:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and self.path_regex.fullmatch(path) is None:
            return False
        for name, value in self.headers:
            if value not in get_all_headers(headers, name):
                return False
        return True


_ANY = RouteMatch()        # an absent match fits everything
_NO_RETRIES = RetryPolicy()


def compile_rule(index, rule) -> CompiledRule:
    m = rule.match or _ANY
    host = m.host.lower().rstrip(".") or None
    suffix = None
    if host and host.startswith("*."):
        host, suffix = None, host[1:]
    split = tuple((dict(t.subset), t.weight) for t in rule.split)
    policy = rule.retries or _NO_RETRIES
    sets, ignored = [], []
    for name in sorted(rule.set_headers):
        if name.lower() in UNSETTABLE_HEADERS:
            ignored.append(name)
        else:
            sets.append((name.encode("latin-1"), rule.set_headers[name].encode("utf-8")))
    return CompiledRule(
        index=index, rule=rule, split=split,
        timeout_s=rule.timeout_ms / 1000 if rule.timeout_ms else None,
        per_try_timeout_s=policy.per_try_timeout_ms / 1000 if policy.per_try_timeout_ms else None,
        retries=policy.attempts, retry_on=frozenset(policy.on),
        set_headers=tuple(sets), ignored_headers=tuple(ignored),
        host=host, host_suffix=suffix,
        path_exact=m.path_exact or None, path_prefix=m.path_prefix or None,
        path_regex=re.compile(m.path_regex) if m.path_regex else None,
        method=m.method.encode("ascii") if m.method else None,
        headers=tuple((k.lower().encode("latin-1"), v.encode("utf-8")) for k, v in sorted(m.headers.items())),
        fault=compile_fault(rule.fault) if rule.fault is not None else None,
        retry_non_idempotent=policy.retry_non_idempotent,
    )


def compile_fault(fault):
    """A FaultInjection for a RouteRule's Fault; None when it injects nothing."""
    if not (fault.delay_percent and fault.delay_ms) and not fault.abort_percent:
        return None
    return FaultInjection(delay_ms=fault.delay_ms, delay_percent=fault.delay_percent,
                          abort_status=fault.abort_status or 503, abort_percent=fault.abort_percent)


class RouteTable:
    """The rules of one RouteSpec (dataplane/store/snapshot.py), compiled once; first match wins."""

    def __init__(self, spec):
        self.service = spec.service
        self.rules = tuple(compile_rule(i, r) for i, r in enumerate(spec.rules))

    def match(self, request):
        """The first CompiledRule fitting an h1.Request, or None (answer 404 or pass through,
        the caller's choice)."""
        host = request_host(request)
        path = request_path(request)
        for rule in self.rules:
            if rule.matches(request.method, host, path, request.headers):
                return rule
        return None


# --- splits and subsets -----------------------------------------------------------------------


def choose_subset(rule: CompiledRule, rng) -> dict:
    """The endpoint labels for one request, by the rule's weights (they add up to 100).
    {} (every endpoint) when the rule has no split. rng is a random.Random."""
    if not rule.split:
        return {}
    point = rng.randrange(100)
    for subset, weight in rule.split:
        if point < weight:
            return subset
        point -= weight
    # Only reachable when weights do not add up to 100 (config_schema refuses that): take the
    # last target with a weight.
    for subset, weight in reversed(rule.split):
        if weight:
            return subset
    return rule.split[-1][0]


def subset_matches(labels, subset) -> bool:
    """Whether an endpoint's labels carry every key and value of subset."""
    return all(labels.get(k) == v for k, v in subset.items())


def subset_filter(endpoints, subset, labels_of=None) -> list:
    """The endpoints whose labels carry subset. labels_of(endpoint) gives an endpoint's labels;
    by default each endpoint is its labels (a dict or a protobuf map)."""
    if not subset:
        return list(endpoints)
    get = labels_of or (lambda e: e)
    return [e for e in endpoints if subset_matches(get(e), subset)]


# --- header rewrite --------------------------------------------------------------------------


def apply_set_headers(headers, set_headers) -> tuple:
    """headers with each (name, value) of set_headers (a CompiledRule or its tuple) set: the
    first field of that name (case-insensitive) takes the value in place, later ones are
    removed; absent names are appended in order."""
    if isinstance(set_headers, CompiledRule):
        set_headers = set_headers.set_headers
    if not set_headers:
        return tuple(headers)
    wanted = {n.lower(): (n, v) for n, v in set_headers}
    done = set()
    out = []
    for name, value in headers:
        low = name.lower()
        if low in wanted:
            if low not in done:
                out.append((name, wanted[low][1]))
                done.add(low)
            continue
        out.append((name, value))
    for name, value in set_headers:
        if name.lower() not in done:
            out.append((name, value))
            done.add(name.lower())
    return tuple(out)


# --- retries ---------------------------------------------------------------------------------


def retryable(method, outcome, policy, marked_safe: bool = False) -> bool:
    """Whether one failed try may be retried under policy (ignoring how many were made).

    method: bytes or str. outcome: a response status (int) or CONNECT_FAILURE or RESET.
    policy: a CompiledRule, a RetryPolicy or an iterable of `on` conditions.
    Conditions (RetryPolicy.on): "connect-failure", "reset", "5xx" (any 5xx status, and also
    reset and connect failure, as in Envoy), "502", "503", "504" or any status code as text,
    "retriable-4xx" (409). Only idempotent methods (GET HEAD OPTIONS TRACE PUT DELETE) are
    retried unless marked_safe. A connect failure never reached the upstream, so it is retried
    for any method. The caller must still be able to replay the request body."""
    on = _conditions(policy)
    if not on:
        return False
    if isinstance(method, str):
        method = method.encode("ascii")
    if outcome == CONNECT_FAILURE:
        return "connect-failure" in on or "5xx" in on
    if not (marked_safe or method in IDEMPOTENT_METHODS):
        return False
    if outcome == RESET:
        return "reset" in on or "5xx" in on
    if not isinstance(outcome, int):
        raise ValueError(f"unknown outcome {outcome!r}")
    if str(outcome) in on:
        return True
    if 500 <= outcome <= 599 and "5xx" in on:
        return True
    return outcome in RETRIABLE_4XX and "retriable-4xx" in on


def _conditions(policy):
    if isinstance(policy, CompiledRule):
        return policy.retry_on
    if hasattr(policy, "on"):
        return frozenset(policy.on)
    return frozenset(policy or ())


# --- fault injection -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    delay_s: float  # 0: no delay
    abort_status: int  # None: no abort


@dataclass(frozen=True)
class FaultInjection:
    """Delay and abort a percentage (0-100, fractions allowed) of requests; built from a
    RouteRule's Fault (compile_fault), or given per service in proxy.ServicePolicy."""
    delay_ms: int = 0
    delay_percent: float = 0.0
    abort_status: int = 503
    abort_percent: float = 0.0

    def __post_init__(self):
        for name in ("delay_percent", "abort_percent"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be within 0-100")
        if not 200 <= self.abort_status <= 599:
            raise ValueError("abort_status must be within 200-599")

    def decide(self, rng) -> Fault:
        """Two independent draws: delay first (the forwarder sleeps), then abort (answer
        abort_status with local_reply(..., FAULT_ABORT) instead of forwarding)."""
        delay = self.delay_ms / 1000 if rng.random() * 100 < self.delay_percent else 0.0
        abort = self.abort_status if rng.random() * 100 < self.abort_percent else None
        return Fault(delay, abort)


# --- local replies ---------------------------------------------------------------------------


def local_reply(status: int, body_text: str, reason: str, close: bool = None, head: bool = False,
                extra_headers=()) -> bytes:
    """A complete HTTP/1.1 response made by the forwarder itself.

    text/plain body (body_text plus a newline), Content-Length, and `x-glasswing-reason: REASON`
    naming why (NO_HEALTHY_ENDPOINT, RATE_LIMITED...). close adds "Connection: close"; by default
    it is set for the statuses that answer a broken request (400, 408, 413, 414, 431, 501, 505).
    head=True (the request was HEAD) keeps the headers and leaves out the body."""
    if close is None:
        close = status in _CLOSING_STATUSES
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    body = (body_text.rstrip("\n") + "\n").encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        f"x-glasswing-reason: {reason}",
    ]
    for name, value in extra_headers:
        lines.append(f"{_text(name)}: {_text(value)}")
    if close:
        lines.append("connection: close")
    for line in lines:
        if "\r" in line or "\n" in line or "\0" in line:
            raise ValueError(f"header line {line[:40]!r} would break the response framing")
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head_bytes if head else head_bytes + body


def error_reply(error, head: bool = False) -> bytes:
    """The answer to an h1.HttpError from the request parser (always closes)."""
    reason = BAD_REQUEST if error.status == 400 else f"http_{error.status}"
    if error.status == 502:
        reason = UPSTREAM_ERROR
    return local_reply(error.status, error.reason, reason, close=True, head=head)

