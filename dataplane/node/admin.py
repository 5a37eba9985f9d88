"""The forwarder's admin socket: one JSON request per line, one JSON answer.

Requests: {"cmd": "status"} (its "revision" is the store revision the forwarder
has reconciled, from its store watch), {"cmd": "sync"} (answer the status once
the watch has caught up with the store's revision now; it reconciles nothing
itself), {"cmd": "shutdown"}."""
import asyncio
import json
import os
import socket

from dataplane.errors import GlasswingError


async def serve(path: str, handler):
    if os.path.exists(path):
        os.unlink(path)

    async def on_client(reader, writer):
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                req = json.loads(line or b"{}")
                answer = await handler(req)
            except Exception as e:  # noqa: BLE001 - one bad request must not hurt the forwarder
                answer = {"ok": False, "error": " ".join(str(e).split())}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(on_client, path=path)
    os.chmod(path, 0o600)
    return server


def request(path: str, cmd: str, timeout: float = 30.0, **args) -> dict:
    """Blocking client used by the CLI."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise GlasswingError(f"forwarder is not running (no admin socket at {path})") from None
    except socket.timeout:
        raise GlasswingError(f"forwarder did not answer {cmd!r} within {timeout:.0f}s") from None
    finally:
        s.close()
    if not buf:
        raise GlasswingError(f"forwarder closed the admin socket without answering {cmd!r}")
    return json.loads(buf)
