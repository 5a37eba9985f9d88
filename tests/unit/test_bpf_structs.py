"""The ctypes mirrors in dataplane/kernel/structs.py match the headers in bpf/ byte for byte:
glasswing.h (the hooks' maps) and kernel_relay.h (the kernel relay's, also compiled into the
C engine).

gcc compiles the headers into a small program that prints sizeof and offsetof of every
mirrored field; each number is compared with ctypes. No root needed, but gcc and the
kernel uapi headers (linux/bpf.h) must be installed: without them the test fails.
"""
import os
import ctypes
import re
import shutil
import subprocess

import pytest

from dataplane.kernel import structs as bpf_structs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BPF_DIR = os.path.join(ROOT, "bpf")


def _header_structs(header: str) -> dict:
    """{struct name: [field names in order]} from a header in bpf/, comments stripped."""
    with open(os.path.join(BPF_DIR, header)) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    return {name: re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*;", body)
            for name, body in re.findall(r"^\s*struct\s+(\w+)\s*\{(.*?)\}", text, re.M | re.S)}


def _all_mirrors() -> dict:
    return {cname: mirror for per_header in bpf_structs.MIRRORS.values()
            for cname, mirror in per_header.items()}


def _c_source() -> str:
    lines = ['#include <stdio.h>', '#include <stddef.h>']
    lines += [f'#include "{os.path.join(BPF_DIR, header)}"' for header in bpf_structs.MIRRORS]
    lines.append("int main(void) {")
    for cname, mirror in _all_mirrors().items():
        lines.append(f'  printf("{cname} sizeof %zu\\n", sizeof(struct {cname}));')
        for field, *_ in mirror._fields_:
            lines.append(f'  printf("{cname} {field} %zu %zu\\n", offsetof(struct {cname}, {field}), '
                         f'sizeof(((struct {cname} *)0)->{field}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _c_layout(tmp_path) -> dict:
    gcc = shutil.which("gcc")
    assert gcc, "gcc not found: install gcc to check bpf/*.h against dataplane/kernel/structs.py"
    probe = subprocess.run([gcc, "-E", "-x", "c", "-"], input="#include <linux/bpf.h>\n",
                           capture_output=True, text=True)
    assert probe.returncode == 0, "linux/bpf.h not found: apt-get install linux-libc-dev\n" + probe.stderr
    uapi = tmp_path / "uapi" / "linux"
    uapi.mkdir(parents=True)
    (uapi / "bpf.h").write_text("#include <linux/bpf.h>\n")
    (uapi / "in.h").write_text("#include <linux/in.h>\n")
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text(_c_source())
    r = subprocess.run([gcc, "-I", str(tmp_path), '-DPIN_DIR="/x"', "-o", str(exe), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, "compiling bpf/*.h with the mirrored field names failed:\n" + r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    layout = {}
    for line in out.splitlines():
        struct, what, *values = line.split()
        layout[(struct, what)] = tuple(int(v) for v in values)
    return layout


def test_the_mirrors_cover_every_header_in_bpf():
    headers = {f for f in os.listdir(BPF_DIR) if f.endswith(".h") and _header_structs(f)}
    assert headers == set(bpf_structs.MIRRORS), "headers in bpf/ with structs but no mirrors (or the reverse)"


@pytest.mark.parametrize("header", sorted(bpf_structs.MIRRORS))
def test_every_header_struct_has_a_mirror(header):
    in_header = set(_header_structs(header))
    assert in_header, f"no `struct NAME {{` found in bpf/{header}"
    mirrors = set(bpf_structs.MIRRORS[header])
    assert in_header - mirrors == set(), f"structs in {header} without a ctypes mirror"
    assert mirrors - in_header == set(), f"mirrors of structs not in {header}"


def test_mirror_fields_are_the_header_fields_in_order():
    in_header = {}
    for header in bpf_structs.MIRRORS:
        in_header.update(_header_structs(header))
    assert in_header["orig_dst"] == ["ip", "port", "flags", "redir_ip", "redir_port", "pad"]
    assert in_header["gw_kr_state"] == ["peer", "redirected", "passed", "slot", "gen", "side", "user",
                                        "repeated", "seq_next", "seq_known"]
    for cname, mirror in _all_mirrors().items():
        assert [f for f, *_ in mirror._fields_] == in_header[cname], f"struct {cname}"


def test_sizes_and_offsets_match_the_header(tmp_path):
    layout = _c_layout(tmp_path)
    mismatches = []
    for cname, mirror in _all_mirrors().items():
        want = {("sizeof",) + layout[(cname, "sizeof")]}
        have = {("sizeof", ctypes.sizeof(mirror))}
        for field, *_ in mirror._fields_:
            want.add((field,) + layout[(cname, field)])  # (name, offset, size)
            have.add((field, getattr(mirror, field).offset, getattr(mirror, field).size))
        if want != have:
            mismatches.append(f"struct {cname}: C {sorted(want - have)} vs ctypes {sorted(have - want)}")
    assert mismatches == [], "\n".join(mismatches)


def test_constants_match_the_header():
    with open(os.path.join(BPF_DIR, "glasswing.h")) as f:
        defines = dict(re.findall(r"^#define\s+(GW_\w+)\s+(\d+)", f.read(), re.M))
    for const in ("GW_REDIRECTED", "GW_TRANSLATED", "GW_DNS", "GW_SVC_SOCKET_LB", "GW_FAIL_OPEN", "GW_FAIL_CLOSED"):
        assert int(defines[const]) == getattr(bpf_structs, const), const


def test_bpf_and_engine_include_the_kernel_relay_header():
    """The structs are not copied: the verdict program and the C engine both include the one
    header (bcc gets -I bpf from the loader, setup.py puts bpf/ on the engine's include path)."""
    with open(os.path.join(BPF_DIR, "kernel_relay.c")) as f:
        prog = f.read()
    engine_dir = os.path.join(ROOT, "ext", "relay")
    engine = ""
    for name in sorted(os.listdir(engine_dir)):
        if name.endswith((".c", ".h")):
            with open(os.path.join(engine_dir, name)) as f:
                engine += f.read()
    for text in (prog, engine):
        assert '#include "kernel_relay.h"' in text
        assert not re.search(r"struct\s+\w*kr_(state|event)\s*\{", text), "a copy of a kernel relay struct"
