"""A gRPC server and client (Python grpcio, whose C core dials IPv4 through dual-stack
AF_INET6 sockets with ::ffff:a.b.c.d) run inside pods by the integration tests. No generated
code: generic handlers with bytes in and out.

    python3 grpc_peers.py serve NAME PORT   prints "ready" once it listens
    python3 grpc_peers.py client TARGET     one JSON line: the unary and the streaming replies

Service mesh.Echo: Unary answers "NAME PEER " + the request (PEER as the server sees it, e.g.
ipv4:127.0.0.6:40000 through the mesh); Stream answers each request with "NAME " + it.
"""
import json
import sys
from concurrent import futures

import grpc


def _same(b):
    return b


def serve(name, port):
    def unary(req, ctx):
        return f"{name} {ctx.peer()} ".encode() + req

    def stream(reqs, ctx):
        for req in reqs:
            yield f"{name} ".encode() + req

    handler = grpc.method_handlers_generic_handler("mesh.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _same, _same),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, _same, _same),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def client(target):
    out = {}
    with grpc.insecure_channel(target) as ch:
        grpc.channel_ready_future(ch).result(timeout=20)
        unary = ch.unary_unary("/mesh.Echo/Unary", request_serializer=_same, response_deserializer=_same)
        stream = ch.stream_stream("/mesh.Echo/Stream", request_serializer=_same, response_deserializer=_same)
        out["unary"] = unary(b"ping", timeout=10).decode().split()
        big = bytes(range(256)) * 4096  # 1 MiB: several HTTP/2 frames and flow-control windows
        out["big_same"] = unary(big, timeout=10).endswith(big)
        out["stream"] = [r.decode() for r in stream(iter([b"a", b"bb", b"ccc"]), timeout=10)]
    print(json.dumps(out))


if __name__ == "__main__":
    {"serve": serve, "client": client}[sys.argv[1]](*sys.argv[2:])
