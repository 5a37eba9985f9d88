#!/usr/bin/env bash
# Installs what Glasswing needs on a Debian 12 machine, as root, and only what is missing.
# Used by `make` (demo, test) and by the Vagrant provisioning, so both set up machines the same way.
#   scripts/install.sh [VENV_DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/.venv}

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (BPF, namespaces and packages need it)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian 12"

kver=$(uname -r)
pkgs=(python3-bpfcc bpfcc-tools bpftool iproute2 iperf3 curl socat python3-venv python3-dev gcc make procps etcd-server dnsutils haproxy sockperf wrk nginx postgresql default-jre-headless)
# Headers for the running kernel when Debian has them (the VM's 6.1); otherwise Debian's
# generic headers, linked under /lib/modules below (bcc only needs a consistent tree).
if [ ! -e "/lib/modules/$kver/build/include" ]; then
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then pkgs+=("linux-headers-$kver");
  else pkgs+=(linux-headers-amd64); fi
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  # The mesh runs its own etcd, HAProxy, nginx and PostgreSQL (tests) where it needs them: keep the packages'
  # system services from starting (and listening on the host) while they install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if apt-cache show "linux-headers-$kver" >/dev/null 2>&1 && [ -e "/lib/modules/$kver/build/include" ]; then :; elif [ ! -e "/lib/modules/$kver/build/include" ]; then
  arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [ -n "$arch" ] && [ -n "$common" ] || die "no kernel headers under /usr/src (linux-headers-amd64 did not install)"
  say "no headers for kernel $kver: linking $arch"
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$arch" "/lib/modules/$kver/build"
  ln -sfn "$common" "/lib/modules/$kver/source"
fi

if ! grep -q ' /sys/fs/bpf bpf ' /proc/self/mounts; then
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
grep -q ' cgroup2 ' /proc/self/mounts || die "no cgroup v2 mount in /proc/self/mounts"

# An offline wheelhouse (baked into the test VM's box by scripts/vm-box.sh): no index then.
wheels=${GLASSWING_WHEELHOUSE:-/var/lib/glasswing/wheelhouse}
pipsrc=()
[ -d "$wheels" ] && pipsrc=(--no-index --find-links "$wheels") && say "Python packages from $wheels (offline)"
if [ ! -x "$venv/bin/python" ]; then
  say "creating venv $venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pipsrc[@]}" -U pip
fi
stamp="$venv/.requirements.sha"
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pipsrc[@]}" -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi
# Debian's bcc is pure ctypes over libbcc: make it importable from the venv.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -d /usr/lib/python3/dist-packages/bcc ] || die "bcc Python module missing after installing python3-bpfcc"
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
say "ready: $venv"
