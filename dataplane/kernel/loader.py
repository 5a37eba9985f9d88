"""Compiles and loads the hook programs with bcc in a child process and
hands their fds to the parent over a unix socket (SCM_RIGHTS). The child
exits at once; the programs live on through the fds, the maps through their
pins. Keeps LLVM out of the long-running forwarder.

The kernel relay (bpf/kernel_relay.c) comes in the same unit: its verdict
program and its three maps, unpinned, so they live exactly as long as the
parent holds their fds.

    python -m dataplane.kernel.loader PIN_DIR SOCKET_FD
"""
import json
import os
import socket
import subprocess
import sys

from dataplane.errors import GlasswingError
from dataplane.kernel.hooks import BPF_DIR, FILES, HOOKS

MAX_FDS = 16
RELAY = "kernel_relay"
RELAY_OBJECTS = ("gw_kr_verdict", "gw_kr_socks", "gw_kr_state", "gw_kr_events")


def load(pin_dir: str) -> tuple[dict, dict]:
    """({hook function: (prog fd, attach type number)} for every hook in hooks.HOOKS,
    {name: fd} for the kernel relay's program and maps, RELAY_OBJECTS)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with parent:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "dataplane.kernel.loader", pin_dir,
                                     str(child.fileno())], pass_fds=[child.fileno()],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            child.close()  # the child's copy is the only one left: EOF if it dies early
        msg, fds, _flags, _addr = socket.recv_fds(parent, 65536, MAX_FDS)
        _out, err = proc.communicate(timeout=120)
    if proc.returncode != 0 or not msg:
        for fd in fds:
            os.close(fd)
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        raise GlasswingError(f"loading BPF programs failed: {lines[-1] if lines else 'loader exited'}")
    names = json.loads(msg)
    hooks = {n["function"]: (fd, n["attach_type"]) for n, fd in zip(names, fds)}
    return hooks, dict(zip(RELAY_OBJECTS, fds[len(names):]))


def one_unit(bpf_dir: str, files: list) -> str:
    """The hook files as one translation unit, so clang parses the kernel
    headers once (a sixth of the load time; what matters under emulation).
    It is handed to bcc as text, not #included: bcc rewrites map calls only
    in its main file. #line keeps compiler errors naming the real file."""
    parts = []
    for name in files:
        with open(os.path.join(bpf_dir, name + ".c")) as f:
            parts.append(f'#line 1 "{name}.c"\n{f.read()}\n')
    return "".join(parts)


def import_bcc():
    try:
        import bcc
    except ImportError:
        raise GlasswingError("bcc Python module not found: install python3-bpfcc "
                             "(make install links it into the venv)") from None
    return bcc


def _child(pin_dir: str, sock_fd: int) -> int:
    bcc = import_bcc()
    os.makedirs(pin_dir, exist_ok=True)
    cflags = [f'-DPIN_DIR="{pin_dir}"', f"-I{BPF_DIR}"]
    names, fds = [], []
    try:
        mod = bcc.BPF(text=one_unit(BPF_DIR, list(FILES) + [RELAY]).encode(), cflags=cflags)
        for hook in HOOKS:
            atype = getattr(bcc.BPFAttachType, hook.attach_type)
            kw = {} if hook.prog_type == "SOCK_OPS" else {"attach_type": atype}
            fn = mod.load_func(hook.function.encode(), getattr(bcc.BPFProgType, hook.prog_type), **kw)
            names.append({"function": hook.function, "attach_type": int(atype)})
            fds.append(fn.fd)
        fds.append(mod.load_func(RELAY_OBJECTS[0].encode(), bcc.BPFProgType.SK_SKB).fd)
        from bcc import libbcc  # bcc has no table class for a SOCKHASH: take the fd
        fds += [libbcc.lib.bpf_table_fd(mod.module, name.encode()) for name in RELAY_OBJECTS[1:]]
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        print(" ".join(str(e).split()), file=sys.stderr)
        return 1
    with socket.socket(fileno=sock_fd) as s:
        socket.send_fds(s, [json.dumps(names).encode()], fds)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], int(sys.argv[2])))
