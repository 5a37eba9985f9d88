"""dataplane/kernel/relay_gate.py: the kernel relay is on only from the oldest kernel it passes
on (none yet: off everywhere), and GLASSWING_KERNEL_RELAY overrides that."""
import pytest

from dataplane.kernel import relay_gate as kernel_relay

RELEASES = ("6.18.44-fc-v669", "6.19.0", "7.0.1", "6.1.0-56-amd64", "6.17.9", "5.15.0", "garbage")


@pytest.mark.parametrize("release", RELEASES)
def test_off_on_every_kernel_while_the_close_hang_is_open(monkeypatch, release):
    monkeypatch.delenv("GLASSWING_KERNEL_RELAY", raising=False)
    assert kernel_relay.KERNEL_MIN is None
    assert kernel_relay.supported(release) is False
    assert kernel_relay.why_not(release).startswith("off: kernel")
    assert "GLASSWING_KERNEL_RELAY=on" in kernel_relay.why_not(release)


@pytest.mark.parametrize("release,on", [("6.18.44-fc-v669", True), ("6.19.0", True), ("7.0.1", True),
                                        ("6.1.0-56-amd64", False), ("6.17.9", False), ("5.15.0", False),
                                        ("garbage", False)])
def test_on_from_kernel_min_once_set(monkeypatch, release, on):
    monkeypatch.delenv("GLASSWING_KERNEL_RELAY", raising=False)
    monkeypatch.setattr(kernel_relay, "KERNEL_MIN", (6, 18))
    assert kernel_relay.supported(release) is on
    assert kernel_relay.why_not(release).startswith("on" if on else "off: kernel")


@pytest.mark.parametrize("force", ["on", "off"])
def test_override(monkeypatch, force):
    monkeypatch.setenv("GLASSWING_KERNEL_RELAY", force)
    for release in ("6.1.0", "6.18.1"):
        assert kernel_relay.supported(release) is (force == "on")
        assert kernel_relay.why_not(release).startswith(f"{force}: GLASSWING_KERNEL_RELAY={force}")
