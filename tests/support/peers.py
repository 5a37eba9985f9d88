"""Programs run inside pods by the integration tests (apps that know nothing
of the mesh). `python3 peers.py serve NAME` runs an HTTP server on 8080 and a
TCP server on 7000 that greets with its name and the peer it sees, then
echoes. `python3 peers.py client IP PORT SIZE` connects, reports
getpeername and the greeting, sends SIZE random bytes, half-closes, and
checks the echo byte for byte. Output is one JSON line.
`echo NAME [PORT]` is the greeting echo server alone, leaving cleanly on
SIGTERM; `burst`, `stream` and `hold` are clients for the traffic policy
tests (see each one). `httpd NAME PORT` is the HTTP/1.1 test server of the
HTTP tests and `gets`, `concurrent`, `ws`, `longpoll`, `raw` their clients."""
import hashlib
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time


def greet_and_echo(s, name, peer):
    """One line "NAME PEER-ADDRESS", then every byte back until the client half-closes."""
    s.sendall(f"{name} {peer[0]}\n".encode())
    while True:
        data = s.recv(1 << 16)
        if not data:
            break
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)


def serve(name):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"pod": name, "peer": self.client_address[0]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            greet_and_echo(self.request, name, self.client_address)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    echo = socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()


def client(ip, port, size):
    out = {}
    t0 = time.monotonic()
    try:
        s = socket.create_connection((ip, int(port)), timeout=5)
        out["peername"] = list(s.getpeername())
        f = s.makefile("rb")
        out["greeting"] = f.readline().decode().split()
        payload = os.urandom(int(size))
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = hashlib.sha256()
        n = 0
        while True:
            chunk = f.read1(1 << 16)
            if not chunk:
                break
            got.update(chunk)
            n += len(chunk)
        sender.join()
        out.update(sent=len(payload), received=n,
                   same=got.hexdigest() == hashlib.sha256(payload).hexdigest())
    except OSError as e:
        out["error"] = type(e).__name__
        out["errno"] = e.errno
    out["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(out))


def echo(name, port="7000", bind="0.0.0.0"):
    """Only the greeting echo server of serve(), on bind:port (an IPv6 bind address listens on
    IPv6 only, IPV6_V6ONLY, as an app that knows no IPv4 would). SIGTERM closes the
    listener at once (new connects are refused) and exits once the
    connections in progress are done: an endpoint going away cleanly."""
    import signal

    lock = threading.Lock()
    busy = [0]  # connections in progress

    def handle(s, peer):
        try:
            greet_and_echo(s, name, peer)
        except OSError:
            pass
        finally:
            s.close()
            with lock:
                busy[0] -= 1

    def start(c, peer):
        c.settimeout(None)
        with lock:
            busy[0] += 1
        threading.Thread(target=handle, args=(c, peer), daemon=True).start()

    ls = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ":" in bind:
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    ls.bind((bind, int(port)))
    ls.listen(512)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ls.settimeout(0.05)
    while not stop.is_set():
        try:
            c, peer = ls.accept()
        except socket.timeout:
            continue
        except OSError:
            if stop.is_set():
                break
            raise
        start(c, peer)
    ls.setblocking(False)
    while True:  # what completed its handshake before the stop is served too
        try:
            start(*ls.accept())
        except OSError:
            break
    ls.close()
    deadline = time.monotonic() + 5
    while busy[0] and time.monotonic() < deadline:
        time.sleep(0.01)  # a poll: the handlers still at work, with the deadline above


def _greeting(s, timeout=5.0):
    """The server's greeting line split, or the error that came instead."""
    s.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                return {"error": "EOF"}
            data += chunk
    except OSError as e:
        return {"error": type(e).__name__}
    return {"greeting": data.decode().split()}


def burst(ip, port, n):
    """Connect n times at once, then read every greeting: how many were served."""
    socks, out = [], {"served": 0, "reset": 0, "other": [], "pods": {}}
    for _ in range(int(n)):
        s = socket.socket()
        s.settimeout(5)
        s.connect((ip, int(port)))
        socks.append(s)
    for s in socks:
        g = _greeting(s)
        if "greeting" in g:
            out["served"] += 1
            out["pods"][g["greeting"][0]] = out["pods"].get(g["greeting"][0], 0) + 1
        elif g["error"] in ("ConnectionResetError", "EOF"):
            out["reset"] += 1
        else:
            out["other"].append(g["error"])
    for s in socks:
        s.close()
    print(json.dumps(out))


def stream(ip, port, seconds):
    """Connections one after another for seconds: each must greet and echo
    1000 bytes. Reports how many worked, the failures and who served."""
    out = {"ok": 0, "failures": [], "pods": {}}
    end = time.monotonic() + float(seconds)
    payload = os.urandom(1000)
    while time.monotonic() < end:
        try:
            s = socket.create_connection((ip, int(port)), timeout=5)
            g = _greeting(s)
            if "greeting" not in g:
                raise OSError(g["error"])
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            s.close()
            if got != payload:
                raise OSError(f"echo of {len(got)} bytes differs")
            out["ok"] += 1
            pod = g["greeting"][0]
            out["pods"][pod] = out["pods"].get(pod, 0) + 1
        except OSError as e:
            out["failures"].append(f"{type(e).__name__}: {e}")
        time.sleep(0.01)  # paced: a steady stream of connections
    print(json.dumps(out))


def hold(ip, port):
    """Connections driven from stdin, one JSON line answered per command:
    `open` (answers the greeting or the error), `close I`, `ping I` (echo a
    few bytes), `wait_eof I SECONDS` (whether the server side closed I)."""
    conns = []
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "open":
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect((ip, int(port)))
                g = _greeting(s)
            except OSError as e:
                g = {"error": type(e).__name__}
            conns.append(s)
            g["i"] = len(conns) - 1
            out = g
        elif cmd[0] == "close":
            conns[int(cmd[1])].close()
            out = {"closed": int(cmd[1])}
        elif cmd[0] == "ping":
            s = conns[int(cmd[1])]
            try:
                s.settimeout(5)
                s.sendall(b"ping")
                out = {"echo": s.recv(4).decode()}
            except OSError as e:
                out = {"error": type(e).__name__}
        elif cmd[0] == "wait_eof":
            s = conns[int(cmd[1])]
            t0 = time.monotonic()
            s.settimeout(float(cmd[2]))
            try:
                data = s.recv(4096)
                out = {"eof": data == b"", "data": data.decode(errors="replace")}
            except socket.timeout:
                out = {"eof": False}
            except OSError as e:
                out = {"eof": True, "error": type(e).__name__}
            out["seconds"] = round(time.monotonic() - t0, 3)
        else:
            out = {"error": f"unknown command {cmd[0]}"}
        print(json.dumps(out), flush=True)


# --- HTTP tests ---------------------------------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def httpd(name, port="8080"):
    """HTTP/1.1 with keep-alive, one thread per connection. Every answer carries
    `x-pod: NAME` and echoes the request's trace headers as x-seen-traceparent,
    x-seen-request-id and x-seen-canary.
      GET /             {"pod": NAME}, after the current delay
      POST /delay?ms=N  from now on, every GET / waits N ms first (a slow endpoint)
      GET /hold?ms=N    answers after N ms (for the circuit breaker)
      GET /chunked?n=K  K chunks of 1000 bytes, 10 ms apart (streamed)
      POST /echo        the body back, sent with Content-Length or chunked
      GET /longpoll?s=S answers after S seconds
      GET /ws           a WebSocket upgrade; then every frame is echoed back
      GET /status?code=C  answers C"""
    import base64
    import urllib.parse
    state = {"delay": 0.0}

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, code=200, body=b"", headers=()):
            self.send_response(code)
            self.send_header("x-pod", name)
            for h in ("traceparent", "x-request-id", "x-canary"):
                if self.headers.get(h) is not None:
                    self.send_header(f"x-seen-{h}", self.headers[h])
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _query(self):
            u = urllib.parse.urlsplit(self.path)
            return u.path, dict(urllib.parse.parse_qsl(u.query))

        def _body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            path, q = self._query()
            if path == "/":
                time.sleep(state["delay"])  # a slow server, on request
                return self._reply(body=json.dumps({"pod": name}).encode())
            if path == "/hold":
                time.sleep(int(q.get("ms", "1000")) / 1000)  # held, on request
                return self._reply(body=name.encode())
            if path == "/status":
                return self._reply(int(q.get("code", "200")), body=name.encode())
            if path == "/longpoll":
                time.sleep(float(q.get("s", "60")))  # a long poll
                return self._reply(body=b"event")
            if path == "/chunked":
                self.send_response(200)
                self.send_header("x-pod", name)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(int(q.get("n", "10"))):
                    self.wfile.write(b"3e8\r\n" + bytes([65 + i % 26]) * 1000 + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.01)  # a slow stream of chunks
                self.wfile.write(b"0\r\n\r\n")
                return
            if path == "/ws":
                key = self.headers.get("Sec-WebSocket-Key", "")
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                while True:
                    frame = ws_read(self.rfile)
                    if frame is None:
                        break
                    self.wfile.write(ws_frame(frame, mask=False))
                    self.wfile.flush()
                self.close_connection = True
                return
            self._reply(404, b"no such path")

        def do_POST(self):
            path, q = self._query()
            body = self._body()
            if path == "/delay":
                state["delay"] = int(q.get("ms", "0")) / 1000
                return self._reply(body=b"ok")
            if path == "/echo":
                return self._reply(body=body)
            self._reply(404, b"no such path")

        def log_message(self, *a):
            pass

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    http.server.ThreadingHTTPServer.daemon_threads = True
    http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), H).serve_forever()


def ws_frame(payload: bytes, mask=True) -> bytes:
    """One final binary WebSocket frame (payload < 64 KiB)."""
    head = bytes([0x82])
    n = len(payload)
    m = 0x80 if mask else 0
    head += bytes([m | n]) if n < 126 else bytes([m | 126]) + n.to_bytes(2, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_read(f):
    """The payload of the next frame from a file object, None at EOF or a close frame."""
    head = f.read(2)
    if len(head) < 2 or head[0] & 0x0F == 0x8:
        return None
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    key = f.read(4) if head[1] & 0x80 else None
    data = f.read(n)
    return bytes(b ^ key[i % 4] for i, b in enumerate(data)) if key else data


def _http_conn(ip, port):
    import http.client
    return http.client.HTTPConnection(ip, int(port), timeout=30)


def gets(ip, port, n, path="/", pause_ms="0"):
    """n GET requests over one keep-alive connection (a new one after an error): counts of
    statuses, answering pods and errors, as one JSON line."""
    out = {"statuses": {}, "pods": {}, "errors": [], "connections": 1}
    conn = _http_conn(ip, port)
    for _ in range(int(n)):
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            out["statuses"][str(r.status)] = out["statuses"].get(str(r.status), 0) + 1
            pod = r.getheader("x-pod") or r.getheader("x-glasswing-reason") or "?"
            out["pods"][pod] = out["pods"].get(pod, 0) + 1
        except (OSError, Exception) as e:  # noqa: BLE001 - every failure is reported
            out["errors"].append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = _http_conn(ip, port)
            out["connections"] += 1
        if float(pause_ms):
            time.sleep(float(pause_ms) / 1000)  # the pause asked for between requests
    print(json.dumps(out))


def concurrent(ip, port, n, path):
    """n requests for path at once, each on its own connection: their statuses and reasons."""
    results = [None] * int(n)

    def one(i):
        try:
            c = _http_conn(ip, port)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            results[i] = [r.status, r.getheader("x-glasswing-reason")]
        except Exception as e:  # noqa: BLE001
            results[i] = [0, type(e).__name__]
    threads = [threading.Thread(target=one, args=(i,)) for i in range(int(n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results))


def ws(ip, port, seconds):
    """A WebSocket to /ws kept open for seconds, echoing one message a second."""
    import base64
    out = {"echoed": 0}
    t0 = time.monotonic()
    s = socket.create_connection((ip, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: chat\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    f = s.makefile("rb")
    status = f.readline().decode()
    headers = {}
    while True:
        line = f.readline().decode().strip()
        if not line:
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    out["status"] = status.split()[1]
    want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    out["accept_ok"] = headers.get("sec-websocket-accept") == want
    end = t0 + float(seconds)
    try:
        while True:
            msg = os.urandom(100)
            s.sendall(ws_frame(msg))
            if ws_read(f) != msg:
                out["error"] = "echo differs"
                break
            out["echoed"] += 1
            if time.monotonic() >= end:
                break
            time.sleep(1)  # paced: one message a second
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))


def longpoll(ip, port, seconds):
    t0 = time.monotonic()
    c = _http_conn(ip, port)
    c.timeout = float(seconds) + 30
    try:
        c.request("GET", f"/longpoll?s={seconds}")
        r = c.getresponse()
        out = {"status": r.status, "body": r.read().decode()}
    except Exception as e:  # noqa: BLE001
        out = {"error": f"{type(e).__name__}: {e}"}
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))


def raw(ip, port, hex_payload, wait="3", then_get="0"):
    """Send raw bytes (hex, or "-": hex on stdin), read until EOF or wait seconds: the reply's first line, whether the
    connection was closed, and (then_get=1) whether the same connection then serves a GET."""
    if hex_payload == "-":  # too long for an argument
        hex_payload = sys.stdin.read().strip()
    s = socket.create_connection((ip, int(port)), timeout=5)
    try:
        s.sendall(bytes.fromhex(hex_payload))
    except OSError as e:
        print(json.dumps({"error": type(e).__name__, "closed": True}))
        return
    s.settimeout(float(wait))
    data, closed = b"", False
    try:
        while True:
            c = s.recv(65536)
            if not c:
                closed = True
                break
            data += c
            if then_get == "1" and b"\r\n\r\n" in data:
                break
    except socket.timeout:
        pass
    except OSError as e:
        closed = type(e).__name__
    out = {"first": data.split(b"\r\n", 1)[0].decode("latin-1"), "closed": closed,
           "reply": data[:2000].decode("latin-1")}
    print(json.dumps(out))


if __name__ == "__main__":
    {"serve": serve, "client": client, "echo": echo, "burst": burst, "stream": stream,
     "hold": hold, "httpd": httpd, "gets": gets, "concurrent": concurrent, "ws": ws,
     "longpoll": longpoll, "raw": raw}[sys.argv[1]](*sys.argv[2:])
