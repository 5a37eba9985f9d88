"""The admin socket's commands (dataplane/node/admin.py serves them) and the status answer.

  status      the forwarder's state: the base fields plus every collaborator's part
  sync        status once the store watch has caught up with the store's revision now (it
              reconciles nothing itself: a change is reconciled once, from the watch)
  shutdown    ask the forwarder to stop
  relay       switch the relay mode of new connections ({"mode": ...}; the bench does)

status() is {"ok": True, "node", "pid", "stats", "errors"} merged with the dicts of parts,
callables asked in order (the reconciler's revision and store state, the publisher's
endpoint count, the relay sink's connections and relay mode, pods, DNS, HTTP...).
"""
import os

from dataplane.relay import modes as relay_modes


class AdminCommands:
    def __init__(self, *, node: str, sync, shutdown, relays, parts, counters: dict, errors: dict):
        """sync(): a coroutine waiting until the store watch has caught up with the store,
        None or why it did not in time; shutdown(): ask the forwarder to stop;
        relays: the relay sink (its mode is switched here); parts: callables returning
        dicts merged into status."""
        self.node = node
        self._sync, self._shutdown, self._relays = sync, shutdown, relays
        self._parts, self._counters, self._errors = parts, counters, errors

    async def handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "sync":
            error = await self._sync()
            return {"ok": False, "error": error} if error else self.status()
        if cmd == "shutdown":
            self._shutdown()
            return {"ok": True}
        if cmd == "relay":  # new connections only; the bench switches paths this way
            try:
                self._relays.mode = relay_modes.check(req.get("mode"))
            except ValueError as e:
                return {"ok": False, "error": str(e)}
            return self.status()
        return {"ok": False, "error": f"unknown admin command {cmd!r}"}

    def status(self) -> dict:
        out = {"ok": True, "node": self.node, "pid": os.getpid()}
        for part in self._parts:
            out.update(part())
        out.update(stats=self._counters, errors=self._errors)
        return out
