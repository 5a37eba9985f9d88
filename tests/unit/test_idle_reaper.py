"""dataplane.relay.idle_reaper: relays idle past their service's timeout are
found by polling byte counters; fake relays and a fake clock."""
from dataplane.relay.idle_reaper import IdleReaper, interval


class Clock:
    def __init__(self, t=50.0):
        self.t = t

    def __call__(self):
        return self.t


class FakeRelay:
    def __init__(self, service):
        self.info = (service, None, "trace", "pod")
        self.bytes = (0, 0)


def test_idle_relay_is_found_after_its_timeout_only():
    clock = Clock()
    reaper = IdleReaper(clock=clock)
    r = FakeRelay("default/web")
    timeouts = {"default/web": 2.0}.get
    assert reaper.scan([r], timeouts) == []
    clock.t += 1.9
    assert reaper.scan([r], timeouts) == []
    clock.t += 0.2
    assert reaper.scan([r], timeouts) == [r]


def test_bytes_in_either_direction_count_as_activity():
    clock = Clock()
    reaper = IdleReaper(clock=clock)
    r = FakeRelay("default/web")
    timeouts = {"default/web": 2.0}.get
    reaper.scan([r], timeouts)
    for moved in ((10, 0), (10, 5), (11, 5)):
        clock.t += 1.5
        r.bytes = moved
        assert reaper.scan([r], timeouts) == []
    clock.t += 1.5
    assert reaper.scan([r], timeouts) == []
    clock.t += 1.0
    assert reaper.scan([r], timeouts) == [r]


def test_services_without_timeout_and_gone_relays_are_not_watched():
    clock = Clock()
    reaper = IdleReaper(clock=clock)
    plain, timed = FakeRelay("default/plain"), FakeRelay("default/web")
    timeouts = {"default/web": 1.0}.get
    reaper.scan([plain, timed, FakeRelay("x")], lambda s: timeouts(s) or 0)
    assert reaper.watched() == 1
    clock.t += 5
    assert reaper.scan([plain], lambda s: timeouts(s) or 0) == []
    assert reaper.watched() == 0


def test_changed_timeout_applies_to_open_relays():
    clock = Clock()
    reaper = IdleReaper(clock=clock)
    r = FakeRelay("default/web")
    reaper.scan([r], lambda s: 10.0)
    clock.t += 3
    assert reaper.scan([r], lambda s: 10.0) == []
    assert reaper.scan([r], lambda s: 2.0) == [r]


def test_scan_interval_follows_the_shortest_timeout():
    assert interval([]) == 1.0
    assert interval([0, 0]) == 1.0
    assert interval([60.0, 2.0]) == 0.5
    assert interval([0.1]) == 0.1
    assert interval([30.0]) == 1.0
