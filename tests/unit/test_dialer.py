"""Which address of an endpoint the mesh dialer dials: the family the app dialled, else the other."""
import pytest

from dataplane.node.dialer import address_for, connect_pod
from dataplane.store.catalog import Endpoint
from tests.support.sockets import connected, echo_server, refusing_port
from tests.support.wait import run

DUAL = Endpoint("p", "n1", "198.18.1.5", 80, ip6="2001:2::c612:105")
FOUR = Endpoint("p", "n1", "198.18.1.6", 80)
SIX = Endpoint(None, None, "", 80, ip6="2001:2::c612:107")


@pytest.mark.parametrize("ep, dialled, want", [
    (DUAL, "198.19.0.10", "198.18.1.5"),
    (DUAL, "2001:2:0:ffff::c613:a", "2001:2::c612:105"),
    (FOUR, "2001:2:0:ffff::c613:a", "198.18.1.6"),   # no IPv6 address: the other family
    (FOUR, "198.19.0.10", "198.18.1.6"),
    (SIX, "198.19.0.10", "2001:2::c612:107"),        # an IPv6-only endpoint behind the IPv4 VIP
    (SIX, "2001:2:0:ffff::c613:a", "2001:2::c612:107"),
])
def test_address_for(ep, dialled, want):
    assert address_for(ep, dialled) == want


def test_addr_of_an_ipv6_only_endpoint_is_its_ipv6_address():
    assert SIX.addr == ("2001:2::c612:107", 80)


def _dialled(log):
    async def connect_local(pod, ip, port, timeout=None):
        log.append(ip)
        return await connected((ip, port), timeout)
    return connect_local


def test_connect_pod_tries_the_other_address_when_the_app_refuses():
    async def main():
        server, port = await echo_server("127.0.0.1")
        log = []
        ep = Endpoint("p", "n1", "127.0.0.1", port, ip6="::1")
        (await connect_pod(_dialled(log), ep, "::1")).close()
        assert log == ["::1", "127.0.0.1"]
        log.clear()
        (await connect_pod(_dialled(log), ep, "127.0.0.1")).close()
        assert log == ["127.0.0.1"]  # the app took it: no second try
        server.close()
    run(main())


def test_connect_pod_raises_the_first_refusal():
    hole, port = refusing_port()
    try:
        log = []
        with pytest.raises(ConnectionRefusedError) as info:
            run(connect_pod(_dialled(log), Endpoint("p", "n1", "127.0.0.1", port, ip6="::1"), "127.0.0.1"))
        assert log == ["127.0.0.1", "::1"] and "127.0.0.1" in str(info.value)
        log.clear()
        with pytest.raises(ConnectionRefusedError):
            run(connect_pod(_dialled(log), Endpoint("p", "n1", "127.0.0.1", port), "127.0.0.1"))
        assert log == ["127.0.0.1"]  # no other address: one try
    finally:
        hole.close()
