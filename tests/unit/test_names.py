"""dataplane.store.names: user input is accepted or refused with one line naming the bad value."""
import ipaddress

import pytest

from dataplane.store import names
from dataplane.errors import GlasswingError


@pytest.mark.parametrize("value", ["a", "p1", "web-1", "0abc", "a" * 40, "a-b-c"])
def test_valid_names(value):
    assert names.name("pod", value) == value


@pytest.mark.parametrize("value", ["", None, "Upper", "with_underscore", "a" * 41, "-a", "a-",
                                   "a.b", "a b", "é", "p1\n", "\np1"])
def test_invalid_names(value):
    with pytest.raises(GlasswingError) as e:
        names.name("pod", value)
    assert str(e.value).startswith(f"invalid pod name {value!r}: ")
    assert "1-40 lowercase letters" in str(e.value)


def test_name_error_is_one_line():
    with pytest.raises(GlasswingError) as e:
        names.name("service", "Bad")
    assert "\n" not in str(e.value)
    assert str(e.value) == ("invalid service name 'Bad': use 1-40 lowercase letters, digits and '-', "
                            "starting and ending with a letter or digit")


@pytest.mark.parametrize("value, want", [(1, 1), ("1", 1), ("80", 80), (65535, 65535), ("65535", 65535)])
def test_port_accepts(value, want):
    assert names.port(value) == want


@pytest.mark.parametrize("value", [0, "0", -1, 65536, "70000"])
def test_port_out_of_range(value):
    with pytest.raises(GlasswingError) as e:
        names.port(value)
    assert str(e.value) == f"invalid port {int(value)}: out of range 1-65535"


@pytest.mark.parametrize("value", ["abc", "", None, "8o", "1.5"])
def test_port_not_a_number(value):
    with pytest.raises(GlasswingError) as e:
        names.port(value, "service port")
    assert str(e.value) == f"invalid service port {value!r}: not a number"


NET = ipaddress.IPv4Network("198.18.1.0/24")


def test_address_inside():
    assert names.address("198.18.1.5", NET, "pod address") == "198.18.1.5"
    assert names.address("198.18.1.254", NET, "pod address") == "198.18.1.254"


@pytest.mark.parametrize("value", ["10.0.0.5", "198.19.0.5", "198.18.2.1"])
def test_address_outside(value):
    with pytest.raises(GlasswingError) as e:
        names.address(value, NET, "pod address")
    assert str(e.value) == f"pod address {value} is outside 198.18.1.0/24"


@pytest.mark.parametrize("value", ["198.18.1.0", "198.18.1.255"])
def test_address_network_or_broadcast(value):
    with pytest.raises(GlasswingError) as e:
        names.address(value, NET, "pod address")
    assert str(e.value) == f"pod address {value} is the network or broadcast address of 198.18.1.0/24"


@pytest.mark.parametrize("value", ["nope", "198.18.1", "198.18.1.300", "::1", ""])
def test_address_not_ipv4(value):
    with pytest.raises(GlasswingError) as e:
        names.address(value, NET, "pod address")
    assert str(e.value) == f"invalid pod address {value!r}: not an IPv4 address"


def test_vip():
    assert names.vip("198.19.0.10") == "198.19.0.10"
    assert names.vip("198.19.255.254") == "198.19.255.254"
    with pytest.raises(GlasswingError, match=r"^service address 198\.18\.0\.10 is outside 198\.19\.0\.0/16$"):
        names.vip("198.18.0.10")
    with pytest.raises(GlasswingError, match=r"^service address 10\.0\.0\.1 is outside 198\.19\.0\.0/16$"):
        names.vip("10.0.0.1")
    with pytest.raises(GlasswingError, match=r"network or broadcast"):
        names.vip("198.19.0.0")


def test_labels():
    assert names.labels(None) == {}
    assert names.labels([]) == {}
    assert names.labels(["app=web", "tier=front", "x.io/y=a_b", "empty="]) == {
        "app": "web", "tier": "front", "x.io/y": "a_b", "empty": ""}
    assert names.labels(["app=a", "app=b"]) == {"app": "b"}


@pytest.mark.parametrize("pair", ["app", "=web", "app=we b", "-a=b", "a=-b", "a b=c", "k=" + "v" * 64,
                                  "app=web\n", "app\n=web"])
def test_invalid_labels(pair):
    with pytest.raises(GlasswingError) as e:
        names.labels(["ok=1", pair])
    assert str(e.value) == f"invalid label {pair!r}: use key=value"


@pytest.mark.parametrize("spec, want", [("80:8080", (80, 8080)), ("80", (80, 80)), ("1:65535", (1, 65535)),
                                        (443, (443, 443))])
def test_port_map(spec, want):
    assert names.port_map(spec) == want


@pytest.mark.parametrize("spec, message", [
    ("0", "invalid service port 0: out of range 1-65535"),
    ("80:70000", "invalid target port 70000: out of range 1-65535"),
    ("80:0", "invalid target port 0: out of range 1-65535"),
    ("x", "invalid service port 'x': not a number"),
    ("80:x", "invalid target port 'x': not a number"),
    ("80:", "invalid target port '': not a number"),
    (":80", "invalid service port '': not a number"),
])
def test_port_map_invalid(spec, message):
    with pytest.raises(GlasswingError) as e:
        names.port_map(spec)
    assert str(e.value) == message
