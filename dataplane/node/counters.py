"""The forwarder's counters (status "stats") and the counted ways it ends an app's connection.

One Counters object is made by the forwarder and handed to every collaborator that counts
(accept loops, outbound, inbound, the sweep); it is a plain dict so that status shows it as
is. Each refusal reason below is counted as refused_REASON, and every refusal is a reset too.
On ports with no declared protocol: sniffed_http and sniffed_opaque count the sniffed
connections by verdict, sniff_skipped those relayed at once to a port marked server-first,
server_first_learned the marks made or renewed, server_first_refuted those dropped because a
client spoke first (node/server_first.py).
"""
import logging

from dataplane.host.sockets import reset as _reset

# Why the forwarder resets an app's new connection; each is counted as refused_REASON.
REFUSALS = ("no_service", "rate_limit", "max_connections", "max_pending", "no_endpoint", "connect_failed")

log = logging.getLogger("glasswing.forwarder")


class Counters(dict):
    """Every counter the forwarder reports, at 0 from the start (status shows all of them)."""

    def __init__(self):
        super().__init__({"accepted": 0, "reset": 0, "tunnel_in": 0, "rejected": 0,
                          **{f"refused_{r}": 0 for r in REFUSALS},
                          "connect_failures": 0, "connect_retries": 0, "outlier_ejections": 0,
                          "idle_closed": 0, "sniffed_http": 0, "sniffed_opaque": 0, "sniff_skipped": 0,
                          "server_first_learned": 0, "server_first_refuted": 0, "http_sessions": 0})


def reset(counters: dict, conn, why: str) -> None:
    """Close conn with a TCP reset, counted and logged with why."""
    counters["reset"] += 1
    log.info("reset: %s", why)
    _reset(conn)


def refuse(counters: dict, conn, reason: str, why: str) -> None:
    """Reset an app's new connection for reason (one of REFUSALS)."""
    counters[f"refused_{reason}"] += 1
    reset(counters, conn, why)
