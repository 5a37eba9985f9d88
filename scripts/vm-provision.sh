#!/usr/bin/env bash
# Runs inside the test VM as root (Vagrant's shell provisioner, vagrant/Vagrantfile):
# builds Glasswing the way `make` does on any Debian 12 machine (scripts/install.sh,
# then the protobuf, package and Cython steps), puts `glasswing` on PATH and runs doctor.
#   scripts/vm-provision.sh [REPO_DIR]     (default /vagrant)
set -euo pipefail
repo=${1:-/vagrant}
say() { printf 'provision: %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "provision: must run as root" >&2; exit 1; }
[ -f "$repo/Makefile" ] || { echo "provision: no repository at $repo" >&2; exit 1; }
# Debian's cloud images ship without make; the offline box has it.
command -v make >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make >/dev/null; }
t0=$(date +%s)
say "kernel $(uname -r), building in $repo"
make -C "$repo" build
ln -sfn "$repo/.venv/bin/glasswing" /usr/local/bin/glasswing
say "built in $(( $(date +%s) - t0 ))s; glasswing doctor:"
glasswing doctor
