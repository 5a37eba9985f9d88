"""The bytes of one try: the request to an upstream connection, the response back to the client.

Transfer is the I/O half of tries.Tries (which decides endpoints, retries and timeouts). It
talks to the client only through the ClientSide interface (tries.py) and to the upstream through
a pool.PooledConn, and raises what the retry loop decides on:

    send_and_read_head(ex, conn) -> Response
        sends ex.head and the replayable body, starts the pump for the rest of the body, and
        reads up to the final response head, passing 1xx on to the client (not to HTTP/1.0
        clients). Raises TryFailed (RESET, BAD_RESPONSE; stale when a reused connection died
        before any response byte) or ClientFailed (the pump's, or the client hung up).
    relay_response(ex, conn, response) -> (upstream reusable, client keeps alive)
        streams the response to the client, reframing it for the client (chunked for HTTP/1.1
        when the upstream closes to end the body; no chunking for HTTP/1.0), or hands both
        sockets to the client side after a 101 (or a 2xx to CONNECT). Raises ClientFailed,
        OSError, or TryFailed(BAD_RESPONSE) for a switch nobody asked for.
    stop_pump(ex)
        ends the body pump of the current try; called once the try is over, whatever happened.

Bodies are streamed in both directions; nothing holds a whole body. The pump copies the
request body into ex.replay while it is at most replay_limit long, so that a failed try can be
replayed; past that ex.replay is None and the request is never retried. The body is sent while
the response is read (full duplex), so "Expect: 100-continue" works. While a response head is
awaited with the request fully sent, the client is watched: EOF or an error from it gives the
try up (ClientFailed), so an abandoned long-poll does not hold its upstream connection; bytes
from it (a pipelined request) stay unread and end the watch for this request.
"""
import asyncio
import dataclasses
import logging

from dataplane.http.exchange import BAD_RESPONSE, ClientFailed, TryFailed
from dataplane.http.h1 import (NEED_DATA, BodyWriter, Data, EndOfMessage, HttpError,
                               InformationalResponse, Response, Switched, strip_hop_by_hop,
                               write_head)
from dataplane.http.route import RESET
from dataplane.http.sockio import wait_readable

log = logging.getLogger("glasswing.http")


class Transfer:
    """Moves the bytes of the tries of one client connection (see the module docstring)."""

    def __init__(self, client, settings, loop):
        self.client = client  # a tries.ClientSide
        self.settings = settings  # proxy.HttpSettings: recv_size, replay_limit
        self.loop = loop
        self.peak_buffered = 0  # most response bytes held at once (bounded by recv_size)

    async def send_and_read_head(self, ex, conn) -> Response:
        """Send the request (head, replayed body, then the pump for the rest) and read up to the
        final response head, passing 1xx on."""
        parser = conn.parser
        parser.expect(ex.method)
        stale = conn.reused
        try:
            await self.loop.sock_sendall(conn.sock, ex.head + ex.replay if ex.replay else ex.head)
        except OSError as e:
            raise TryFailed(RESET, f"sending the request: {e}", stale=stale) from None
        if not ex.body_done:
            ex.client_error = ex.upstream_write_error = None
            ex.pump = self.loop.create_task(self._pump(ex, conn.sock))
        got_bytes = False
        while True:
            try:
                ev = parser.next_event()
            except HttpError as e:
                raise TryFailed(BAD_RESPONSE, e.reason) from None
            if ev is NEED_DATA:
                try:
                    data = await self._upstream_recv(ex, conn, watch_client=not got_bytes)
                except OSError as e:
                    raise TryFailed(RESET, str(e), stale=stale and not got_bytes) from None
                if not data:
                    raise TryFailed(RESET, "the connection closed before a response",
                                    stale=stale and not got_bytes)
                got_bytes = True
                parser.receive_data(data)
                continue
            if isinstance(ev, Response):
                return ev
            if isinstance(ev, InformationalResponse):
                if ex.request.version != b"1.0":  # RFC 9110 15.2: no 1xx to HTTP/1.0 clients
                    head = write_head(dataclasses.replace(ev, headers=strip_hop_by_hop(ev.headers)))
                    ex.informational = True
                    await self.client.send(head)
                continue
            raise TryFailed(BAD_RESPONSE, f"unexpected {ev!r} before a response")

    async def _upstream_recv(self, ex, conn, watch_client=False):
        """recv from the upstream; wakes early to raise the pump's client failure, and with
        watch_client (waiting for a response head, the request fully sent) to raise when the
        client went away, so that an abandoned long-poll does not hold its upstream."""
        sock = conn.sock
        while True:
            if ex.client_error is not None:
                raise ex.client_error
            try:
                return sock.recv(self.settings.recv_size)
            except (BlockingIOError, InterruptedError):
                pass
            pump = ex.pump if ex.pump is not None and not ex.pump.done() else None
            client = None
            if watch_client and ex.watch_client and pump is None and ex.body_done:
                client = self.client.sock
            await wait_readable(self.loop, sock, pump, client)
            if client is not None:
                self._check_client(ex)

    def _check_client(self, ex):
        """The client became readable while its response is awaited. EOF or an error means it
        gave up (nginx does the same): raise. Bytes (a pipelined request) stay unread, and the
        client is not watched again for this request."""
        gone = self.client.hung_up()
        if gone is None:
            return
        if not gone:
            ex.watch_client = False
            return
        self.client.count("client_aborted")
        raise ClientFailed(None, "client closed while waiting for the response")

    async def _pump(self, ex, usock):
        """Stream the rest of the request body to the upstream (a task beside the response)."""
        loop, s = self.loop, self.settings
        while True:
            try:
                ev = await self.client.body_event()
            except ClientFailed as e:
                ex.client_error = e
                return
            if isinstance(ev, Data):
                out = ex.writer.data(ev)
            else:
                out = ex.writer.end(ev.trailers)
                ex.body_done = True
            if ex.replay is not None:
                ex.replay += out
                if len(ex.replay) > s.replay_limit:
                    ex.replay = None
            try:
                await loop.sock_sendall(usock, out)
            except OSError as e:
                ex.upstream_write_error = e  # the response side sees the upstream's state
                return
            if ex.body_done:
                return

    async def stop_pump(self, ex):
        pump, ex.pump = ex.pump, None
        if pump is None:
            return
        if not pump.done():
            pump.cancel()
            await asyncio.wait((pump,))
        if not pump.cancelled() and pump.exception() is not None:
            log.error("request body pump failed", exc_info=pump.exception())
            ex.client_error = ex.client_error or ClientFailed(None, "pump failed")

    def _held(self, n):
        if n > self.peak_buffered:
            self.peak_buffered = n

    async def relay_response(self, ex, conn, response):
        """Stream the response to the client; (upstream reusable, client keeps alive)."""
        client = self.client
        parser = conn.parser
        request = ex.request
        status = response.status
        if status == 101 or (ex.method == b"CONNECT" and 200 <= status < 300):
            return await self._switch(ex, conn, response)
        client_11 = request.version != b"1.0"
        framing = parser.framing
        headers = strip_hop_by_hop(response.headers)
        # A response that starts before the request body ended (413 to an upload, say) ends
        # the connection: the rest of that body may never be read.
        close_client = not ex.keep_alive or not ex.body_done
        if framing == "chunked" and not client_11:
            headers = tuple(h for h in headers if h[0].lower() != b"transfer-encoding")
            writer = BodyWriter(False)
            close_client = True
        elif framing == "close":
            if client_11:
                headers += ((b"Transfer-Encoding", b"chunked"),)
                writer = BodyWriter(True)
            else:
                writer = BodyWriter(False)
                close_client = True
        else:
            writer = BodyWriter(framing == "chunked")
        if ex.retries:
            headers += ((b"x-glasswing-retries", b"%d" % ex.retries),)
        if close_client:
            headers += ((b"Connection", b"close"),)
        elif not client_11:
            headers += ((b"Connection", b"keep-alive"),)
        out = bytearray(write_head(dataclasses.replace(response, headers=headers)))
        ex.committed = True
        client.count(f"responses_{status // 100}xx")
        while True:
            try:
                ev = parser.next_event()
            except HttpError:
                client.count("upstream_bad_body")
                if out:
                    await client.send(bytes(out))
                client.reset()
                return False, False
            if isinstance(ev, Data):
                out += writer.data(ev)
            elif isinstance(ev, EndOfMessage):
                out += writer.end(ev.trailers)
                break
            elif ev is NEED_DATA:
                if out:
                    self._held(len(out))
                    data, out = out, bytearray()
                    await client.send(data)
                try:
                    data = await self._upstream_recv(ex, conn)
                except OSError:
                    client.count("upstream_reset_streaming")
                    client.reset()
                    return False, False
                parser.receive_data(data)
            else:
                client.reset()
                return False, False
        self._held(len(out))
        await client.send(bytes(out))
        if ex.client_error is not None or not ex.body_done:
            return False, False
        try:
            reusable = parser.next_event() is NEED_DATA and not parser.buffered
        except HttpError:
            reusable = False
        return reusable, not close_client

    async def _switch(self, ex, conn, response):
        """101 Switching Protocols (or 2xx to CONNECT): hand both sockets to the client side."""
        if not ex.upgrade or not ex.body_done:
            raise TryFailed(BAD_RESPONSE,
                            f"upstream switched protocols ({response.status}) unasked")
        headers = strip_hop_by_hop(response.headers, keep_upgrade=ex.method != b"CONNECT")
        head = write_head(dataclasses.replace(response, headers=headers))
        to_client = b""
        while True:
            ev = conn.parser.next_event()
            if isinstance(ev, Switched):
                to_client = ev.data
                break
            if not isinstance(ev, EndOfMessage):
                raise TryFailed(BAD_RESPONSE, f"unexpected {ev!r} after {response.status}")
        ex.committed = True
        self.client.count(f"responses_{response.status // 100}xx")
        await self.client.send(head)
        ex.handed = True
        await self.client.switch(conn.sock, to_client)
        return False, False
