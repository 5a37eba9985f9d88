"""A throwaway single-member etcd for tests and benchmarks.

    with EtcdServer() as etcd:       # temp data dir, free loopback ports, healthy
        kv = EtcdKV(etcd.endpoint)
        etcd.stop(); etcd.start()    # same data dir and ports

Leaving the block kills etcd and removes the data dir, even on failure. etcd
also gets SIGKILL if the test process dies (PR_SET_PDEATHSIG). Only
127.0.0.1 is used.
"""
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

TMP_PREFIX = "gw-kvtest-"
HEALTH_TIMEOUT = 30.0


def etcd_binary():
    return shutil.which("etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class EtcdServer:
    def __init__(self):
        self.binary = etcd_binary()
        if self.binary is None:
            raise RuntimeError("etcd is not installed (Debian package etcd-server)")
        self.tmp = None
        self.proc = None
        self.port = self.peer_port = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}"

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + "etcd-")
        try:
            self.port, self.peer_port = free_port(), free_port()
            while self.peer_port == self.port:
                self.peer_port = free_port()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self) -> None:
        assert self.proc is None, "etcd is already running"
        client, peer = self.endpoint, f"http://127.0.0.1:{self.peer_port}"
        argv = [self.binary, "--name", "t", "--data-dir", os.path.join(self.tmp, "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}",
                "--max-txn-ops", "100000", "--max-request-bytes", "33554432"]
        with open(os.path.join(self.tmp, "etcd.log"), "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"etcd exited with {code} while starting: {self.log_tail()}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd not healthy after {HEALTH_TIMEOUT:.0f}s: {self.log_tail()}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """Terminate etcd (SIGTERM, then SIGKILL after 10 s) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def close(self) -> None:
        try:
            self.kill()
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(os.path.join(self.tmp, "etcd.log"), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"
