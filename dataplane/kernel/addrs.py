"""Addresses as the maps hold them (bpf/glasswing.h): 16 bytes in network order, an IPv4
address IPv4-mapped (::ffff:a.b.c.d), the way the kernel's dual-stack sockets see it."""
import ipaddress

from dataplane.kernel.structs import IP16


def ip16(text: str) -> IP16:
    """The map form of an IPv4 or IPv6 address given as text."""
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return IP16.from_buffer_copy(ip.packed)


def ip_text(raw) -> str:
    """The text of a map address (IP16 or its 16 bytes): IPv4 text for a mapped one, else the
    compressed IPv6 text (as ipaddress prints it, the form the catalog's keys use)."""
    ip = ipaddress.IPv6Address(bytes(raw))
    return str(ip.ipv4_mapped or ip)


def is_ipv6(text: str) -> bool:
    """Is this address text a native IPv6 address (not IPv4, not IPv4-mapped)?"""
    ip = ipaddress.ip_address(text)
    return ip.version == 6 and ip.ipv4_mapped is None
