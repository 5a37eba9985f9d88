"""The app side of `glasswing bench connections`, run inside pods (it knows nothing of the mesh).

    python -m lab.bench.peer serve IP PORT
        echo server: every byte read is written back.
    python -m lab.bench.peer hold IP PORT N --period S --hold S [--concurrency C]
        an IM-style client: opens N connections (at most C connecting at once), checks each
        with one echoed message, then keeps all N open for --hold seconds, each sending a
        small message every --period seconds (random phase) and checking the echo.
        Prints one JSON line "opened" when all are open (the bench samples the forwarder's
        memory then) and one "done" line with the counts at the end.
    python -m lab.bench.peer rate IP PORT N [--concurrency C]
        new connections per second: N times connect, one echoed byte, close.
"""
import argparse
import asyncio
import json
import random
import resource
import sys
import time

MSG = b"glasswing-im-ping-0123456789abcd\n"  # 33 bytes: a chat message's size


def emit(**kw):
    print(json.dumps(kw), flush=True)


async def serve(ip, port):
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, ip, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def count(errors: dict, e: BaseException):
    name = type(e).__name__
    errors[name] = errors.get(name, 0) + 1


async def ping(reader, writer):
    writer.write(MSG)
    await writer.drain()
    if await reader.readexactly(len(MSG)) != MSG:
        raise ValueError("echo differs")


async def hold(ip, port, n, period, hold_s, concurrency):
    errors, conns = {}, []
    gate = asyncio.Semaphore(concurrency)

    async def open_one():
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), 10)
                await asyncio.wait_for(ping(r, w), 10)
                conns.append((r, w))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                count(errors, e)

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(n)))
    open_s = time.monotonic() - t0
    emit(event="opened", open=len(conns), seconds=round(open_s, 3),
         per_second=round(len(conns) / open_s, 1), errors=errors)
    ok = [0]
    stop = time.monotonic() + hold_s

    async def chat(r, w, rng):
        await asyncio.sleep(rng.uniform(0, period))
        while time.monotonic() < stop:
            try:
                await asyncio.wait_for(ping(r, w), 10)
                ok[0] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                count(errors, e)
                return
            await asyncio.sleep(period)

    rng = random.Random(1)
    await asyncio.gather(*(chat(r, w, random.Random(rng.random())) for r, w in conns))
    for _, w in conns:
        w.close()
    emit(event="done", open=len(conns), messages=ok[0], errors=errors)


async def rate(ip, port, n, concurrency):
    errors, done = {}, [0]
    gate = asyncio.Semaphore(concurrency)

    async def one():
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), 10)
                w.write(b"x")
                await w.drain()
                await asyncio.wait_for(r.readexactly(1), 10)
                w.close()
                done[0] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                count(errors, e)

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    s = time.monotonic() - t0
    emit(event="rate", connections=done[0], seconds=round(s, 3), per_second=round(done[0] / s, 1),
         errors=errors)


def roomy_fd_limit() -> None:
    """Thousands of sockets: the soft open-file limit up to the hard one (a login shell's
    soft limit is often 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None):
    roomy_fd_limit()
    p = argparse.ArgumentParser(prog="bench_peer")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("ip")
    s.add_argument("port", type=int)
    h = sub.add_parser("hold")
    h.add_argument("ip")
    h.add_argument("port", type=int)
    h.add_argument("n", type=int)
    h.add_argument("--period", type=float, default=5.0)
    h.add_argument("--hold", type=float, default=30.0)
    h.add_argument("--concurrency", type=int, default=256)
    r = sub.add_parser("rate")
    r.add_argument("ip")
    r.add_argument("port", type=int)
    r.add_argument("n", type=int)
    r.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        asyncio.run(serve(a.ip, a.port))
    elif a.cmd == "hold":
        asyncio.run(hold(a.ip, a.port, a.n, a.period, a.hold, a.concurrency))
    else:
        asyncio.run(rate(a.ip, a.port, a.n, a.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
