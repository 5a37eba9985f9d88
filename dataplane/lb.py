"""Endpoint choice. Round robin per service port; later policies live beside it."""


class RoundRobin:
    def __init__(self):
        self._next = {}

    def pick(self, key, endpoints: list):
        """The next endpoint of key in turn; None when there are none."""
        if not endpoints:
            return None
        i = self._next.get(key, 0) % len(endpoints)
        self._next[key] = i + 1
        return endpoints[i]
