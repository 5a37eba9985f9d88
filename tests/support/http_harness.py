"""The HTTP proxy harness (tests/unit/test_http_proxy.py, test_http_wiring.py), over loopback TCP:

    Client (raw HTTP bytes) --TCP--> Proxy: accept -> HttpSession --TCP--> Server(s)
                                               |  FakeUpstreams.pick/connect
                                               |  UpstreamPool (shared by the sessions)

Servers are tiny HTTP/1.1 servers (asyncio streams + h1.RequestParser) whose handlers script
each misbehaviour; Client reads responses with h1.ResponseParser. setup() builds all of it.
"""
import asyncio
import socket

from dataplane.store import codec
from dataplane.store import schema as cs
from dataplane.http import h1 as h
from dataplane.http import route as hr
from dataplane.http.pool import UpstreamPool
from dataplane.http.proxy import HttpSession, NoEndpoint
from dataplane.http.route import subset_matches

from tests.support.sockets import connected

CLOSE, RESET = "close", "reset"


def routes(*rules):
    doc = {"apiVersion": cs.API_VERSION, "kind": "Route", "metadata": {"name": "r"},
           "spec": {"service": "web", "rules": list(rules)}}
    return hr.RouteTable(codec.to_typed(cs.validate(doc, "test", 1)).spec)


def ok(body=b"ok", extra=b""):
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def status(code, body=b"nope"):
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (code, len(body), body)


# --- upstream servers ------------------------------------------------------------------------


class Ctx:
    """What a handler sees: the connection's streams and parser, and which request this is."""

    def __init__(self, server, reader, writer, conn_no):
        self.server, self.reader, self.writer, self.conn_no = server, reader, writer, conn_no
        self.parser = h.RequestParser()
        self.req_no = 0  # on this connection, from 1
        self.raw = bytearray()  # every byte received on this connection


class Server:
    """An HTTP/1.1 upstream on 127.0.0.1. handler(ctx, request, body) returns the response bytes,
    CLOSE (close without answering), RESET, or None when it wrote the response itself."""

    def __init__(self, handler=None, name="s"):
        self.handler = handler or (lambda ctx, req, body: ok(name.encode()))
        self.name = name
        self.connections = 0
        self.closed = 0  # connections ended, by either side
        self.requests = []  # (Request, body)
        self.raws = []

    async def start(self):
        _SERVERS.append(self)
        self.srv = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.addr = self.srv.sockets[0].getsockname()
        return self

    async def stop(self):
        self.srv.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        ctx = Ctx(self, reader, writer, self.connections)
        self.raws.append(ctx.raw)
        try:
            while True:
                req = await self._event(ctx)
                if not isinstance(req, h.Request):
                    break
                body = bytearray()
                while True:
                    ev = await self._event(ctx)
                    if isinstance(ev, h.EndOfMessage):
                        break
                    body += ev.data
                ctx.req_no += 1
                self.requests.append((req, bytes(body)))
                out = self.handler(ctx, req, bytes(body))
                if asyncio.iscoroutine(out):
                    out = await out
                if out == CLOSE:
                    break
                if out == RESET:
                    writer.transport.abort()
                    return
                if out is not None:
                    writer.write(out)
                    await writer.drain()
                if not req.keep_alive or ctx.parser.must_close:
                    break
                if ctx.parser.next_event() is h.PAUSED and not ctx.parser.must_close:
                    ctx.parser.resume()
        except (ConnectionError, h.HttpError):
            pass
        finally:
            writer.close()
            self.closed += 1

    async def _event(self, ctx):
        while True:
            ev = ctx.parser.next_event()
            if ev is h.NEED_DATA:
                data = await ctx.reader.read(65536)
                ctx.raw += data
                ctx.parser.receive_data(data)
                continue
            return ev


class FakeUpstreams:
    """Endpoints by key: (address, labels). Round robin over the fitting ones, avoiding tried."""

    def __init__(self, endpoints):
        self.endpoints = dict(endpoints)
        self.picks = []
        self.connects = {}
        self._rr = 0

    def pick(self, service, port, subset, exclude):
        fit = [k for k, (_a, labels) in self.endpoints.items() if subset_matches(labels, subset or {})]
        if not fit:
            raise NoEndpoint(service)
        fresh = [k for k in fit if k not in exclude] or fit
        self._rr += 1
        key = fresh[self._rr % len(fresh)]
        self.picks.append(key)
        return key

    async def connect(self, key):
        self.connects[key] = self.connects.get(key, 0) + 1
        return await connected(self.endpoints[key][0])


class Proxy:
    """Accepts on 127.0.0.1 and runs an HttpSession per connection."""

    def __init__(self, upstreams, **kw):
        self.upstreams = upstreams
        self.kw = kw
        self.sessions = []
        self.metrics = {}
        self.tasks = set()

    async def start(self):
        loop = asyncio.get_running_loop()
        self.pool = self.kw.pop("pool", None) or UpstreamPool(loop)
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.addr = self.lsock.getsockname()
        self.task = asyncio.ensure_future(self._accept())
        return self

    async def _accept(self):
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.lsock)
            conn.setblocking(False)
            s = HttpSession(conn, "web", 80, self.upstreams, pool=self.pool, metrics=self.metrics,
                            **self.kw)
            self.sessions.append(s)
            t = asyncio.ensure_future(s.run())
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def stop(self):
        self.task.cancel()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(self.task, *self.tasks, return_exceptions=True)
        self.lsock.close()
        self.pool.close()
        while _CLIENTS:
            _CLIENTS.pop().close()
        while _SERVERS:
            srv = _SERVERS.pop()
            srv.srv.close()
            await srv.srv.wait_closed()
        await asyncio.sleep(0)  # one loop turn: the closed transports finish


_CLIENTS = []  # closed by Proxy.stop
_SERVERS = []


class Client:
    def __init__(self, addr):
        self.addr = addr
        self.parser = h.ResponseParser()

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(*self.addr)
        _CLIENTS.append(self)
        return self

    async def send(self, data):
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, method=b"GET", chunk=65536, pause=0.0):
        """(Response, body, informational responses) of the next response; None at EOF."""
        p = self.parser
        p.expect(method)
        resp, body, info = None, bytearray(), []
        while True:
            ev = p.next_event()
            if ev is h.NEED_DATA:
                data = await self.reader.read(chunk)
                if pause:
                    await asyncio.sleep(pause)  # a slow reader, on request
                p.receive_data(data)
            elif isinstance(ev, h.InformationalResponse):
                info.append(ev)
            elif isinstance(ev, h.Response):
                resp = ev
            elif isinstance(ev, h.Data):
                body += ev.data
            elif isinstance(ev, h.EndOfMessage):
                return resp, bytes(body), info
            else:
                return None

    async def request(self, target=b"/", method=b"GET", headers=(), body=None):
        hs = b"".join(b"%s: %s\r\n" % kv for kv in headers)
        if body is not None:
            hs += b"content-length: %d\r\n" % len(body)
        await self.send(b"%s %s HTTP/1.1\r\nhost: web\r\n%s\r\n%s" % (method, target, hs, body or b""))
        return await self.response(method)

    async def closed(self, within=5.0) -> bool:
        """True when the proxy closed (EOF or reset) within the time; unread bytes are dropped."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
            return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def close(self):
        self.writer.close()


async def setup(handlers=None, labels=None, **kw):
    """Servers (one per handler), FakeUpstreams over them, a started Proxy, and a Client."""
    handlers = handlers or [None]
    servers = [await Server(hd, f"s{i}").start() for i, hd in enumerate(handlers)]
    labels = labels or [{} for _ in servers]
    ups = FakeUpstreams({f"s{i}": (s.addr, labels[i]) for i, s in enumerate(servers)})
    proxy = await Proxy(ups, **kw).start()
    client = await Client(proxy.addr).open()
    return servers, ups, proxy, client
