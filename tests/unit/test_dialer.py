"""Which address of an endpoint the mesh dialer dials: the family the app dialled, else the other."""
import pytest

from dataplane.node.dialer import address_for
from dataplane.store.catalog import Endpoint

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
