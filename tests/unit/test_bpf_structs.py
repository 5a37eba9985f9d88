"""The ctypes mirrors in dataplane/kernel/structs.py match bpf/glasswing.h byte for byte.

gcc compiles the header into a small program that prints sizeof and offsetof of every
mirrored field; each number is compared with ctypes. No root needed, but gcc and the
kernel uapi headers (linux/bpf.h) must be installed: without them the test fails.
"""
import os
import ctypes
import re
import shutil
import subprocess

from dataplane.kernel import structs as bpf_structs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = os.path.join(ROOT, "bpf", "glasswing.h")


def _header_structs() -> dict:
    """{struct name: [field names in order]} from the header, comments stripped."""
    with open(HEADER) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    return {name: re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*;", body)
            for name, body in re.findall(r"^\s*struct\s+(\w+)\s*\{(.*?)\}", text, re.M | re.S)}


def _c_source() -> str:
    lines = ['#include <stdio.h>', '#include <stddef.h>', f'#include "{HEADER}"', "int main(void) {"]
    for cname, mirror in bpf_structs.MIRRORS.items():
        lines.append(f'  printf("{cname} sizeof %zu\\n", sizeof(struct {cname}));')
        for field, *_ in mirror._fields_:
            lines.append(f'  printf("{cname} {field} %zu %zu\\n", offsetof(struct {cname}, {field}), '
                         f'sizeof(((struct {cname} *)0)->{field}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _c_layout(tmp_path) -> dict:
    gcc = shutil.which("gcc")
    assert gcc, "gcc not found: install gcc to check bpf/glasswing.h against dataplane/kernel/structs.py"
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
    assert r.returncode == 0, "compiling bpf/glasswing.h with the mirrored field names failed:\n" + r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    layout = {}
    for line in out.splitlines():
        struct, what, *values = line.split()
        layout[(struct, what)] = tuple(int(v) for v in values)
    return layout


def test_every_header_struct_has_a_mirror():
    in_header = set(_header_structs())
    assert in_header, f"no `struct NAME {{` found in {HEADER}"
    assert in_header - set(bpf_structs.MIRRORS) == set(), "structs in glasswing.h without a ctypes mirror"
    assert set(bpf_structs.MIRRORS) - in_header == set(), "mirrors of structs not in glasswing.h"


def test_mirror_fields_are_the_header_fields_in_order():
    in_header = _header_structs()
    assert in_header["orig_dst"] == ["ip", "port", "flags", "redir_ip", "redir_port", "pad"]
    for cname, mirror in bpf_structs.MIRRORS.items():
        assert [f for f, *_ in mirror._fields_] == in_header[cname], f"struct {cname}"


def test_sizes_and_offsets_match_the_header(tmp_path):
    layout = _c_layout(tmp_path)
    mismatches = []
    for cname, mirror in bpf_structs.MIRRORS.items():
        want = {("sizeof",) + layout[(cname, "sizeof")]}
        have = {("sizeof", ctypes.sizeof(mirror))}
        for field, *_ in mirror._fields_:
            want.add((field,) + layout[(cname, field)])  # (name, offset, size)
            have.add((field, getattr(mirror, field).offset, getattr(mirror, field).size))
        if want != have:
            mismatches.append(f"struct {cname}: C {sorted(want - have)} vs ctypes {sorted(have - want)}")
    assert mismatches == [], "\n".join(mismatches)


def test_constants_match_the_header():
    with open(HEADER) as f:
        defines = dict(re.findall(r"^#define\s+(GW_\w+)\s+(\d+)", f.read(), re.M))
    for const in ("GW_REDIRECTED", "GW_TRANSLATED", "GW_DNS", "GW_SVC_SOCKET_LB", "GW_FAIL_OPEN", "GW_FAIL_CLOSED"):
        assert int(defines[const]) == getattr(bpf_structs, const), const
