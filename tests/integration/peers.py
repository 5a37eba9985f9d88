"""Programs run inside pods by the integration tests (apps that know nothing
of the mesh). `python3 peers.py serve NAME` runs an HTTP server on 8080 and a
TCP server on 7000 that greets with its name and the peer it sees, then
echoes. `python3 peers.py client IP PORT SIZE` connects, reports
getpeername and the greeting, sends SIZE random bytes, half-closes, and
checks the echo byte for byte. Output is one JSON line.
`echo NAME [PORT]` is the greeting echo server alone, leaving cleanly on
SIGTERM; `burst`, `stream` and `hold` are clients for the traffic policy
tests (see each one)."""
import hashlib
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time


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
            s = self.request
            s.sendall(f"{name} {self.client_address[0]}\n".encode())
            while True:
                data = s.recv(1 << 16)
                if not data:
                    break
                s.sendall(data)
            s.shutdown(socket.SHUT_WR)

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


def echo(name, port="7000"):
    """Only the greeting echo server of serve(), on port. SIGTERM closes the
    listener at once (new connects are refused) and exits once the
    connections in progress are done: an endpoint going away cleanly."""
    import signal

    lock = threading.Lock()
    busy = [0]  # connections in progress

    def handle(s, peer):
        try:
            s.sendall(f"{name} {peer[0]}\n".encode())
            while True:
                data = s.recv(1 << 16)
                if not data:
                    break
                s.sendall(data)
            s.shutdown(socket.SHUT_WR)
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

    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", int(port)))
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
        time.sleep(0.01)


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
        time.sleep(0.01)
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


if __name__ == "__main__":
    {"serve": serve, "client": client, "echo": echo, "burst": burst, "stream": stream,
     "hold": hold}[sys.argv[1]](*sys.argv[2:])
