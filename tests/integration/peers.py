"""Programs run inside pods by the integration tests (apps that know nothing
of the mesh). `python3 peers.py serve NAME` runs an HTTP server on 8080 and a
TCP server on 7000 that greets with its name and the peer it sees, then
echoes. `python3 peers.py client IP PORT SIZE` connects, reports
getpeername and the greeting, sends SIZE random bytes, half-closes, and
checks the echo byte for byte. Output is one JSON line."""
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


if __name__ == "__main__":
    {"serve": serve, "client": client}[sys.argv[1]](*sys.argv[2:])
