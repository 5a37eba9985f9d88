"""The relay engine, pure-Python twin of dataplane.relay._engine_c (ext/engine.pyx over
ext/relay/engine.c): the reference for its semantics, and what runs where Cython is not built.

An Engine is a thread with its own epoll that carries the bytes of every connection handed
to it, both ways, until both sides are done, so the forwarder's event loop only accepts,
connects and hands over. Here the thread runs dataplane/relay/relay.py's Relay (with the movers of
dataplane/relay/movers.py and a pipe pool of its own); the C engine is the same state machine
without the GIL.

    Engine(max_conns=1 << 20)
    add(a_fd, b_fd, to_b=b"", to_a=b"", mode="auto") -> id
        The fds (non-blocking sockets) are the engine's from here on, even when add raises
        (then both are reset and closed). to_b/to_a: bytes read ahead that go out first.
        mode: "auto", "splice" or "copy" (dataplane/relay/movers.py), or "kernel": the C engine
        then carries the bytes in the kernel (bpf/kernel_relay.c) until a direction carries
        bulk; this twin has no kernel path and runs "kernel" as "auto". OSError(EMFILE) past
        max_conns open, OSError(ESHUTDOWN) once stopped.
    kernel(socks_fd, state_fd, ring_fd, ring_bytes) -> bool
                        give the engine the kernel relay's maps; False here (no kernel path),
                        True from the C engine
    in_kernel()         open connections the kernel carries (0 here)
    abort(id) -> bool   reset both sides; the connection ends with ECONNABORTED. False when
                        id is not open.
    close_conn(id) -> bool
                        close both sides cleanly (FIN); the connection ends with 0.
    bytes(id)           (a -> b, b -> a) moved so far, or None when id is not open
    fileno()            readable when done() has something
    done()              ended connections as (id, errno or 0, bytes a -> b, bytes b -> a);
                        an id is open until done() returned it, and may be reused after
    len(engine)         connections open (added, not yet returned by done())
    stop()              stop the thread, reset what is open (collect it with done())
    close()             stop, and free everything

A connection ends cleanly (errno 0) when both directions have seen EOF and forwarded it as a
half-close; any error on either side resets both (errno of the failure).
"""
import errno
import os
import select
import socket
import threading

from dataplane.relay.movers import MODES
from dataplane.relay.pipes import PipePool
from dataplane.relay.poller import Poller
from dataplane.relay.relay import Relay

class Engine:
    def __init__(self, max_conns: int = 1 << 20):
        self.max_conns = max_conns
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._done_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._relays = {}     # id -> Relay (or None while queued): open connections
        self._free = []       # ids to reuse
        self._next = 0
        self._added = []      # (id, a, b, to_b, to_a, mode) for the thread to start
        self._aborts = []
        self._ended = []      # (id, errno, bytes a -> b, bytes b -> a)
        self._stop = False
        self._closed = False
        self._pool = PipePool()
        self._poller = Poller()
        self._poller.ep.register(self._wake, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="relay-engine", daemon=True)
        self._thread.start()

    # -- the owner's side --

    def fileno(self) -> int:
        self._check()
        return self._done_fd

    def kernel(self, socks_fd: int, state_fd: int, ring_fd: int, ring_bytes: int) -> bool:
        self._check()
        return False

    def in_kernel(self) -> int:
        return 0

    def add(self, a: int, b: int, to_b: bytes = b"", to_a: bytes = b"", mode: str = "auto") -> int:
        self._check()
        try:
            if mode == "kernel":
                mode = "auto"
            if mode not in MODES:
                raise KeyError(mode)
            with self._lock:
                if self._stop:
                    raise OSError(errno.ESHUTDOWN, "relay engine: " + os.strerror(errno.ESHUTDOWN))
                if self._free:
                    cid = self._free.pop()
                elif self._next >= self.max_conns:
                    raise OSError(errno.EMFILE, "relay engine: " + os.strerror(errno.EMFILE))
                else:
                    cid, self._next = self._next, self._next + 1
                self._relays[cid] = None
                self._added.append((cid, a, b, bytes(to_b), bytes(to_a), mode))
        except BaseException:
            for fd in (a, b):
                _reset_fd(fd)
            raise
        os.eventfd_write(self._wake, 1)
        return cid

    def abort(self, cid: int) -> bool:
        return self._end(cid, True)

    def close_conn(self, cid: int) -> bool:
        return self._end(cid, False)

    def _end(self, cid: int, reset: bool) -> bool:
        self._check()
        with self._lock:
            if cid not in self._relays:
                return False
            self._aborts.append((cid, reset))
        os.eventfd_write(self._wake, 1)
        return True

    def bytes(self, cid: int):
        self._check()
        with self._lock:
            if cid not in self._relays:
                return None
            r = self._relays[cid]
        return r.bytes if r is not None else (0, 0)

    def done(self) -> list:
        self._check()
        _drain(self._done_fd)
        with self._lock:
            out, self._ended = self._ended, []
            for cid, *_rest in out:
                del self._relays[cid]
                self._free.append(cid)
        return out

    def __len__(self) -> int:
        return len(self._relays)

    def stop(self) -> None:
        self._check()
        with self._lock:
            if self._stop:
                return
            self._stop = True
        os.eventfd_write(self._wake, 1)
        self._thread.join()
        # The thread is gone: what it left open is reset here.
        with self._lock:
            queued, self._added = self._added, []
            live = [r for r in self._relays.values() if r is not None and not r.closed]
        for _cid, a, b, *_rest in queued:
            self._ended_now(_cid, errno.ECONNABORTED, (0, 0))
            _reset_fd(a)
            _reset_fd(b)
        for r in live:
            r.abort(ConnectionAbortedError(errno.ECONNABORTED, os.strerror(errno.ECONNABORTED)))

    def close(self) -> None:
        if self._closed:
            return
        self.stop()
        self._closed = True
        self._poller.close()
        self._pool.close()
        os.close(self._wake)
        os.close(self._done_fd)

    def _check(self) -> None:
        if self._closed:
            raise ValueError("relay engine is closed")

    # -- the engine thread --

    def _run(self) -> None:
        while True:
            self._poller.dispatch(-1)
            if self._take_requests():
                return

    def _take_requests(self) -> bool:
        """The poller reports the wake fd to nobody (it has no owner): look at the queues
        after every wake-up instead. The wake count is read first, so a request queued
        after it wakes the thread again."""
        _drain(self._wake)
        with self._lock:
            added, self._added = self._added, []
            aborts, self._aborts = self._aborts, []
            stop = self._stop
        for cid, a, b, to_b, to_a, mode in added:
            r = Relay(self._poller, socket.socket(fileno=a), socket.socket(fileno=b),
                      to_b=to_b, to_a=to_a, on_close=self._relay_ended, info=(cid,),
                      mode=mode, pool=self._pool)
            with self._lock:
                self._relays[cid] = r
            r.start()
        for cid, reset in aborts:
            r = self._relays.get(cid)
            if r is None or r.closed:
                continue
            if reset:
                r.abort(ConnectionAbortedError(errno.ECONNABORTED, os.strerror(errno.ECONNABORTED)))
            else:
                r.close()
        return stop

    def _relay_ended(self, r: Relay) -> None:
        e = r.error
        code = 0 if e is None else (getattr(e, "errno", None) or errno.EIO)
        self._ended_now(r.info[0], code, r.bytes)

    def _ended_now(self, cid: int, code: int, counts) -> None:
        with self._lock:
            self._ended.append((cid, code, counts[0], counts[1]))
        os.eventfd_write(self._done_fd, 1)


def _drain(eventfd: int) -> None:
    try:
        os.eventfd_read(eventfd)
    except BlockingIOError:  # nothing signalled since the last read
        pass


def _reset_fd(fd: int) -> None:
    s = socket.socket(fileno=fd)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    s.close()
