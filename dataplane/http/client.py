"""The client side of one HTTP/1.1 proxy session: the client's socket, its RequestParser, and
every byte sent to or read from the client.

proxy.HttpSession reads request heads through it (read_head) and answers locally through it
(answer, failed); tries.Tries reaches the client only through it, as the ClientSide interface
documented in tries.py (sock, count, send, reset, body_event, hung_up, answer, failed, switch).

States: open, then closed (close, reset or linger_close) or switched (the socket went to
on_switch after a 101 or a 2xx to CONNECT, and is no longer ours to close or reset). reset()
and close() do nothing once the connection is closed or switched.

Client-side deadlines: the first request's head must be complete within head_timeout of the
session's start, later ones within head_timeout of their first byte; between requests a client
may stay idle for idle_timeout, and a client that stalls its request body or stops reading its
response for idle_timeout is given up on (ClientFailed).
"""
import asyncio
import inspect
import socket

from dataplane.host.sockets import reset
from dataplane.http.exchange import ClientFailed
from dataplane.http.h1 import NEED_DATA, PAUSED, BodyWriter, Data, EndOfMessage, HttpError, Request
from dataplane.http.route import error_reply, local_reply
from dataplane.http.sockio import recv

LINGER_BYTES = 256 * 1024  # read and dropped at most while closing after an error


def _closes(data):
    """Whether a local reply says Connection: close."""
    return b"\r\nconnection: close\r\n" in data[:data.find(b"\r\n\r\n") + 2].lower()


class ClientConnection:
    """One client connection of an HttpSession (see the module docstring)."""

    def __init__(self, sock: socket.socket, parser, settings, metrics: dict, loop, on_switch=None):
        self.sock = sock
        self.parser = parser  # h1.RequestParser, already fed what was read while sniffing
        self.settings = settings  # proxy.HttpSettings
        self.metrics = metrics
        self.loop = loop
        self.on_switch = on_switch
        self.switched = False
        self.closed = False

    def count(self, key, n=1):
        m = self.metrics
        m[key] = m.get(key, 0) + n

    def count_response(self, status):
        self.count(f"responses_{status // 100}xx")

    # -- reading

    async def read_head(self, first):
        """The next Request, or None when the client closed or idled out between requests.
        Raises HttpError, TimeoutError (head_timeout) or OSError."""
        parser = self.parser
        s = self.settings
        deadline = self.loop.time() + s.head_timeout if first or parser.buffered else None
        while True:
            ev = parser.next_event()
            if ev is NEED_DATA:
                if deadline is None:
                    try:
                        async with asyncio.timeout(s.idle_timeout):
                            data = await recv(self.loop, self.sock, s.recv_size)
                    except TimeoutError:
                        self.count("client_idle_closed")
                        return None
                    deadline = self.loop.time() + s.head_timeout
                else:
                    async with asyncio.timeout_at(deadline):
                        data = await recv(self.loop, self.sock, s.recv_size)
                parser.receive_data(data)
                continue
            if isinstance(ev, Request):
                return ev
            if ev is PAUSED and not parser.must_close:
                parser.resume()  # an Upgrade request that was not switched
                continue
            return None  # ConnectionClosed, or PAUSED after a closing request

    def take_buffered_body(self, ex):
        """Move the request body bytes already received into ex.replay (no I/O), up to
        replay_limit; the tries' pump streams the rest. Raises HttpError."""
        if ex.writer is None:
            ex.writer = BodyWriter(self.parser.framing == "chunked")
        while not ex.body_done and len(ex.replay) < self.settings.replay_limit:
            ev = self.parser.next_event()  # HttpError: the caller answers it
            if isinstance(ev, Data):
                ex.replay += ex.writer.data(ev)
            elif isinstance(ev, EndOfMessage):
                ex.replay += ex.writer.end(ev.trailers)
                ex.body_done = True
            else:
                return

    async def body_event(self):
        """The next Data or EndOfMessage of the request body, reading the client as needed.
        Raises ClientFailed: a framing error (with its HttpError), a body stalled for
        idle_timeout, a socket error, any other event."""
        parser, s = self.parser, self.settings
        while True:
            try:
                ev = parser.next_event()
            except HttpError as e:
                raise ClientFailed(e) from None
            if ev is NEED_DATA:
                try:
                    async with asyncio.timeout(s.idle_timeout):
                        data = await recv(self.loop, self.sock, s.recv_size)
                except TimeoutError:
                    raise ClientFailed(None, "request body stalled") from None
                except OSError as e:
                    raise ClientFailed(None, f"client: {e}") from None
                parser.receive_data(data)
                continue
            if isinstance(ev, (Data, EndOfMessage)):
                return ev
            raise ClientFailed(None, f"unexpected {ev!r} in a request body")

    def hung_up(self):
        """After sock became readable while a response head is awaited: True when the client
        closed (EOF) or broke its connection, False when bytes wait (a pipelined request, left
        unread), None when nothing is there after all. Reads nothing."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return True

    # -- writing and ending

    def reset(self):
        if not self.closed and not self.switched:
            self.closed = True
            reset(self.sock)

    def close(self):
        if not self.switched and not self.closed:
            self.closed = True
            self.sock.close()

    async def send_quietly(self, data):
        try:
            await self.loop.sock_sendall(self.sock, data)
        except OSError:
            pass

    async def send(self, data):
        """Send to the client; a client that takes nothing for idle_timeout is given up on."""
        try:
            async with asyncio.timeout(self.settings.idle_timeout):
                await self.loop.sock_sendall(self.sock, data)
        except TimeoutError:
            raise ClientFailed(None, "client stopped reading") from None
        except OSError as e:
            raise ClientFailed(None, f"client: {e}") from None

    async def linger_close(self):
        """Close after a final response: FIN first, then drop what the client still sends for a
        moment, so that our response is not destroyed by a reset over unread bytes."""
        if self.closed:
            return
        sock = self.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(self.settings.linger):
                n = 0
                while n < LINGER_BYTES:
                    data = await recv(self.loop, sock, self.settings.recv_size)
                    if not data:
                        break
                    n += len(data)
        except (TimeoutError, OSError):
            pass
        self.closed = True
        sock.close()

    async def answer(self, ex, status, text, reason) -> bool:
        """Answer the request ourselves; whether the connection stays open. A body that did not
        arrive completely is not waited for: the connection closes instead."""
        try:
            while not ex.body_done:  # skip what already arrived of the body, without I/O
                ev = self.parser.next_event()
                if isinstance(ev, EndOfMessage):
                    ex.body_done = True
                elif not isinstance(ev, Data):
                    break
        except HttpError:
            pass
        close = True if not (ex.keep_alive and ex.body_done) else None
        data = local_reply(status, text, reason, close=close, head=ex.head_only,
                           extra_headers=((b"x-request-id", ex.request_id.encode("latin-1")),))
        self.count_response(status)
        self.count(f"local_{reason}")
        try:
            await self.send(data)
        except ClientFailed:
            self.reset()
            return False
        return not _closes(data)

    async def failed(self, ex, e) -> bool:
        """The client broke its request (answered, then closed) or went away (reset)."""
        self.count("client_errors")
        if e.error is not None and not ex.committed and not ex.informational:
            self.count_response(e.error.status)
            await self.send_quietly(error_reply(e.error, head=ex.head_only))
            await self.linger_close()
        else:
            self.reset()
        return False

    async def switch(self, upstream, to_client):
        """After a 101 (or a 2xx to CONNECT) whose head was sent: hand both sockets to
        on_switch with the bytes each side sent past its head; the socket is no longer ours."""
        if self.parser.next_event() is not PAUSED:
            upstream.close()
            raise AssertionError("request parser not paused after an upgrade request")
        to_upstream = self.parser.switch_protocol()
        self.switched = True
        self.count("switched")
        result = self.on_switch(self.sock, upstream, to_upstream, to_client)
        if inspect.isawaitable(result):
            await result
