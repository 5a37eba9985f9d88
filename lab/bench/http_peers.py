"""HTTP pieces of the benchmarks: an nginx that answers every request with a small body, and
wrk's report read into numbers.

nginx runs in a server pod, one worker, no logs, keep-alive without a request cap, so the
server is never the narrow part. wrk is closed-loop (each connection sends its next request
when the answer arrives): requests per second with keep-alive, and with `Connection: close`
(every request a new TCP connection), new connections per second.
"""
import os
import re

HTTP_PORT = 8080
BODY = "ok\n"

NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx-{name}.pid;
error_log stderr error;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {dir}/nginx-{name}-body;
    proxy_temp_path {dir}/nginx-{name}-proxy;
    fastcgi_temp_path {dir}/nginx-{name}-fcgi;
    uwsgi_temp_path {dir}/nginx-{name}-uwsgi;
    scgi_temp_path {dir}/nginx-{name}-scgi;
    server {{
        listen {ip}:{port} backlog=4096;{listen6}
        location / {{ {extra}return 200 "{body}"; }}
    }}
}}
"""


def nginx_argv(work_dir: str, name: str, ip: str, port: int = HTTP_PORT, body: str = BODY,
               extra: str = "", ip6: str = "") -> list:
    """Write a config for one nginx on ip:port (and [ip6]:port when given) answering every
    request with 200 and body (extra: more directives for the location, e.g.
    "add_header x-pod web1 always; "), and return the command that runs it."""
    listen6 = f"\n        listen [{ip6}]:{port} backlog=4096;" if ip6 else ""
    conf = os.path.join(work_dir, f"nginx-{name}.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=work_dir, name=name, ip=ip, port=port, extra=extra, listen6=listen6,
                                  body=body.replace("\n", "\\n")))
    return ["nginx", "-c", conf, "-e", "stderr"]


def url(ip: str, port: int, path: str = "/") -> str:
    """http://IP:PORT/path, with the brackets an IPv6 address needs."""
    return f"http://{'[' + ip + ']' if ':' in ip else ip}:{port}{path}"


def wrk_argv(url: str, seconds: int, connections: int, close: bool) -> list:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    return argv + [url]


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def parse_wrk(out: str) -> dict:
    """{'rps': requests/s, 'p50_us', 'p99_us', 'errors': connect, read and write errors +
    non-2xx answers, 'timeouts': requests wrk gave up on after its 2 s timeout}. Timeouts are
    apart: a slow path is a figure, a broken one is not."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise ValueError(f"no Requests/sec in wrk output: {out[-300:]!r}")
    lat = {p: re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M) for p in ("50", "99")}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write) (\d+)", out))
    timeouts = sum(int(n) for n in re.findall(r"timeout (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res = {"rps": float(rps.group(1)), "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
           "timeouts": timeouts}
    for p, m in lat.items():
        res[f"p{p}_us"] = float(m.group(1)) * _UNITS[m.group(2)] if m else None
    return res
