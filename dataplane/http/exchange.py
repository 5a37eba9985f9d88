"""One request on its way upstream: the state its tries share, how a try ends, and the errors
that carry those ends between the session (proxy.HttpSession, client.ClientConnection) and the
tries (tries.Tries, transfer.Transfer).

The session admits a request and fills an Exchange (rule, subset, head, what may be replayed,
the retry budget); the tries then own it until they return. The fields that say what already
reached the client (informational, committed) are what allow or forbid a retry and decide
between a local answer and a reset.

Outcomes of one try, as Upstreams.report and retry_on see them: a response status (int), or
route.CONNECT_FAILURE, route.RESET, TIMEOUT, BAD_RESPONSE.
"""
from dataplane.http.h1 import HttpError

# x-glasswing-reason values beyond route's
CONNECT_ERROR = "upstream_connect_error"
UPSTREAM_RESET = "upstream_reset"

TIMEOUT = "timeout"  # try outcomes beyond route's CONNECT_FAILURE and RESET
BAD_RESPONSE = "bad_response"


class NoEndpoint(Exception):
    """Upstreams.pick found no healthy endpoint (in the subset asked for)."""


class ConnectFailed(Exception):
    """Upstreams.connect could not reach the endpoint (refused, unreachable, tunnel reject)."""


class ClientFailed(Exception):
    """The client broke its request (error: the HttpError to answer) or went away (None)."""

    def __init__(self, error: HttpError = None, why=""):
        super().__init__(why or (error and error.reason) or "client went away")
        self.error = error


class TryFailed(Exception):
    """One try failed before anything of its final response reached the client."""

    def __init__(self, outcome, detail, stale=False, allowed=None):
        super().__init__(detail)
        self.outcome = outcome  # CONNECT_FAILURE, RESET, TIMEOUT, BAD_RESPONSE or a status
        self.detail = detail
        self.stale = stale  # a reused pooled connection died before any response byte
        self.allowed = allowed  # retry already decided (and budget spent) by the try


class Exchange:
    """One request and its tries."""

    __slots__ = ("request", "method", "rule", "subset", "head", "writer", "replay", "body_done",
                 "pump", "client_error", "upstream_write_error", "keep_alive", "upgrade",
                 "head_only", "marked_safe", "may_replay", "retries", "tried", "informational",
                 "committed", "handed", "request_id", "budget", "watch_client", "status")

    def __init__(self, request, rule):
        self.request = request
        self.method = request.method
        self.rule = rule  # route.CompiledRule
        self.subset = None
        self.head = b""
        self.writer = None
        self.replay = bytearray()  # framed body bytes taken so far; None: too long to replay
        self.body_done = False
        self.pump = None  # task streaming the rest of the body to the current try
        self.client_error = None  # a ClientFailed the pump met
        self.upstream_write_error = None
        self.keep_alive = request.keep_alive
        self.upgrade = False
        self.head_only = request.method == b"HEAD"
        self.marked_safe = False
        self.may_replay = False  # idempotent or marked safe
        self.retries = 0
        self.tried = set()
        self.informational = False  # a 1xx went to the client: no more retries
        self.committed = False  # the final response head went to the client
        self.handed = False  # the upstream socket went to the client side's switch()
        self.request_id = None
        self.budget = None
        self.watch_client = True
        self.status = None  # the current try's final response status
