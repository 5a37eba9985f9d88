"""The admin socket's commands (dataplane/node/admin.py serves them) and the status answer.

  status      the forwarder's state: the base fields plus every collaborator's part
  sync        reconcile with the store now, then status (answered when done)
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
        """sync(): reconcile with a fresh store read; shutdown(): ask the forwarder to stop;
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
            self._sync()
            return self.status()
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
