#!/usr/bin/env bash
# `make test-vm`: the user's path, tested offline. Builds the local box if it is missing
# or stale (scripts/vm-box.sh), `vagrant up` with it (provisioning = scripts/install.sh
# through `make build`), then inside the VM: glasswing doctor, the demo and the bpf
# test tier. Logs and junit xml go to results/vm/ (gitignored). The VM, its network,
# its storage pool and volumes, and the libvirt daemons this script started are removed
# on every exit, failure included, and the cleanup is checked.
#
# Environment (optional):
#   GLASSWING_VM_DRIVER=qemu|kvm   libvirt domain type (default qemu: software emulation,
#                                  since /dev/kvm on these hosts cannot run a stock kernel)
#   GLASSWING_VM_TIERS="bpf"       test tiers run in the VM (unit and integration may be added)
#   GLASSWING_VM_BENCH=1           also run `glasswing bench datapath --quick` in the VM
#   GLASSWING_VM_CONNECTIONS=N     also run `glasswing bench connections --quick` with N
#                                  long-lived connections held 10 s (the IM case where root may
#                                  raise the open-file limit, unlike some container hosts)
#   GLASSWING_VM_KEEP=1            leave the VM up on exit (for debugging; no cleanup);
#                                  `scripts/vm-test.sh --destroy` removes it later
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
VM_TAG=test-vm
. "$here/scripts/vm-lib.sh"
vm_need_root

destroy_only=0; [ "${1:-}" = --destroy ] && destroy_only=1
results=${GLASSWING_VM_RESULTS:-$here/results/vm}
if [ $destroy_only = 1 ]; then results=$VM_DIR/destroy; fi
rm -rf "$results"; mkdir -p "$results"
exec > >(tee "$results/test-vm.log") 2>&1
T0=$(date +%s)
since() { echo $(( $(date +%s) - $1 )); }
timings=()
# Vagrant redraws progress lines with \r: keep the log readable.
noprogress() { tr '\r' '\n' | { grep -v -e 'Progress: ' -e '^\s*$' || true; }; }

vm_host_pkgs "${VM_HOST_PKGS[@]}"
if [ $destroy_only = 0 ]; then
  t=$(date +%s)
  bash "$here/scripts/vm-box.sh"
  timings+=("box (build or check): $(since "$t")s")
fi

# Everything Vagrant and libvirt keep for this run lives under $VM_DIR.
net=glasswing-vm
pool=glasswing-vm
export VAGRANT_HOME=$VM_DIR/vagrant.d
export VAGRANT_CWD=$here/vagrant
export VAGRANT_DOTFILE_PATH=$VM_DIR/dotvagrant
export VAGRANT_DEFAULT_PROVIDER=libvirt
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
export LIBVIRT_DEFAULT_URI=qemu:///system
export GLASSWING_BOX=$VM_BOX_NAME
export GLASSWING_VM_DRIVER=${GLASSWING_VM_DRIVER:-qemu}
# 8 GiB, not the Vagrantfile's 4, as every green VM run so far had (memory costs nothing
# until the guest touches it).
export GLASSWING_VM_MEMORY=${GLASSWING_VM_MEMORY:-8192}
export GLASSWING_VM_NETWORK=none                  # isolated: no route from the VM out of the host
export GLASSWING_VM_NETWORK_NAME=$net
export GLASSWING_VM_POOL=$pool
mkdir -p -m 1777 "$VM_DIR/console"
export GLASSWING_VM_SERIAL_LOG=$VM_DIR/console/serial.log
rm -f "$GLASSWING_VM_SERIAL_LOG"
sshcfg=$VM_DIR/ssh-config
fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "${GLASSWING_VM_KEEP:-}" = 1 ]; then
    vm_say "GLASSWING_VM_KEEP=1: leaving the VM up (VAGRANT_HOME=$VAGRANT_HOME VAGRANT_DOTFILE_PATH=$VAGRANT_DOTFILE_PATH)"
    exit $rc
  fi
  vm_say "cleanup: vagrant destroy"
  local t; t=$(date +%s)
  vagrant destroy -f 2>&1 | sed 's/^/  /'
  cp -f "$GLASSWING_VM_SERIAL_LOG" "$results/serial.log" 2>/dev/null
  rm -f "$GLASSWING_VM_SERIAL_LOG" "$sshcfg"
  if virsh pool-info "$pool" >/dev/null 2>&1; then
    for v in $(virsh vol-list "$pool" 2>/dev/null | awk 'NR>2 && NF {print $1}'); do
      virsh -q vol-delete "$v" --pool "$pool" >/dev/null && vm_say "cleanup: deleted volume $v"
    done
    virsh -q pool-destroy "$pool" >/dev/null 2>&1
    virsh -q pool-undefine "$pool" >/dev/null && vm_say "cleanup: removed pool $pool"
  fi
  rm -rf "$VM_DIR/pool"
  if virsh net-info "$net" >/dev/null 2>&1; then
    virsh -q net-destroy "$net" >/dev/null 2>&1
    virsh -q net-undefine "$net" >/dev/null && vm_say "cleanup: removed network $net"
  fi
  {
    echo "# virsh list --all";      virsh list --all
    echo "# virsh net-list --all";  virsh net-list --all
    echo "# virsh pool-list --all"; virsh pool-list --all
    if virsh pool-info default >/dev/null 2>&1; then echo "# virsh vol-list default"; virsh vol-list default; fi
  } > "$results/cleanup.txt" 2>&1
  local left
  left=$(virsh list --all --name 2>/dev/null | grep -v '^$' | grep -c glasswing || true)
  virsh net-info "$net" >/dev/null 2>&1 && left=$((left + 1))
  virsh pool-info "$pool" >/dev/null 2>&1 && left=$((left + 1))
  vm_libvirt_stop
  echo "$fwd_before" > /proc/sys/net/ipv4/ip_forward
  {
    echo "# after stopping the daemons this run started"
    echo "# pgrep -a qemu-system";  pgrep -a qemu-system || echo none
    echo "# pgrep -a libvirtd";     pgrep -a libvirtd || echo none
    echo "# pgrep -a virtlogd";     pgrep -a virtlogd || echo none
    echo "# pgrep -a dnsmasq";      pgrep -a dnsmasq || echo none
    echo "# net.ipv4.ip_forward = $(cat /proc/sys/net/ipv4/ip_forward) (was $fwd_before)"
  } >> "$results/cleanup.txt" 2>&1
  if pgrep -f "qemu-system.*guest=glasswing" >/dev/null || [ "$left" != 0 ]; then
    vm_say "cleanup: FAILED, something is left behind ($results/cleanup.txt)"; rc=1
  else
    vm_say "cleanup: done in $(since "$t")s; no VM, network, pool, volume or VM process left ($results/cleanup.txt)"
  fi
  vm_say "total $(since "$T0")s"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

vm_libvirt_start
[ $destroy_only = 1 ] && { unset GLASSWING_VM_KEEP; exit 0; }   # the trap removes everything
# A leftover from an interrupted run is removed first.
if [ -d "$VAGRANT_DOTFILE_PATH" ]; then vagrant destroy -f >/dev/null 2>&1 || true; fi
virsh net-info "$net" >/dev/null 2>&1 && { virsh -q net-destroy "$net" >/dev/null 2>&1; virsh -q net-undefine "$net" >/dev/null; }
if ! virsh pool-info "$pool" >/dev/null 2>&1; then
  mkdir -p "$VM_DIR/pool"
  virsh -q pool-define-as "$pool" dir --target "$VM_DIR/pool" >/dev/null
  virsh -q pool-start "$pool" >/dev/null
fi

box_sha=$(cat "$VM_BOX_FILE.sha")
if [ "$(cat "$VAGRANT_HOME/glasswing-box.sha" 2>/dev/null)" != "$box_sha" ]; then
  vm_say "vagrant box add $VM_BOX_NAME"
  vagrant box add --force --name "$VM_BOX_NAME" "$VM_BOX_FILE" | noprogress
  echo "$box_sha" > "$VAGRANT_HOME/glasswing-box.sha"
fi

bash "$here/scripts/vm-validate.sh"
t=$(date +%s)
vm_say "vagrant up (driver $GLASSWING_VM_DRIVER, box $VM_BOX_NAME, isolated network $net)"
vagrant up --provider libvirt --no-provision 2>&1 | noprogress
timings+=("vagrant up (box upload, boot to ssh, rsync): $(since "$t")s")
vagrant ssh-config > "$sshcfg"
vssh() { ssh -F "$sshcfg" -o LogLevel=ERROR default "$@"; }
vm_say "boot: $(vssh 'systemd-analyze time 2>/dev/null | head -n1')"

t=$(date +%s)
vagrant provision
timings+=("provision (install.sh + make build + doctor): $(since "$t")s")

kernel=$(vssh uname -r)
vm_say "VM kernel: $kernel (host: $(uname -r))"
echo "$kernel" > "$results/vm-kernel.txt"

failed=()
step() {  # step NAME COMMAND...: runs in the VM, logs to results/vm/NAME.log, goes on after a failure
  local name=$1; shift
  local t; t=$(date +%s)
  vm_say "== $name: $*"
  if vssh "$@" 2>&1 | tee "$results/$name.log"; then
    timings+=("$name: $(since "$t")s, passed")
  else
    timings+=("$name: $(since "$t")s, FAILED")
    failed+=("$name")
  fi
}
vssh 'rm -rf /tmp/gw-results && mkdir -p /tmp/gw-results'
step doctor 'sudo glasswing doctor'
# The demo as a user runs it, with 2 s iperf3 runs instead of 5 (software emulation is slow).
step demo "sudo glasswing demo --seconds ${GLASSWING_VM_DEMO_SECONDS:-2}"
for tier in ${GLASSWING_VM_TIERS-bpf}; do
  step "tests-$tier" "cd /vagrant && sudo GLASSWING_REQUIRE_ALL=1 .venv/bin/python -m pytest -q -rs -p no:cacheprovider tests/$tier --junitxml=/tmp/gw-results/$tier.xml"
done
if [ "${GLASSWING_VM_BENCH:-}" = 1 ]; then
  step bench 'sudo glasswing bench datapath --quick'
fi
if [ -n "${GLASSWING_VM_CONNECTIONS:-}" ]; then
  step connections "sudo glasswing bench connections --quick --connections ${GLASSWING_VM_CONNECTIONS} --hold 10 --out /tmp/gw-results"
fi
scp -F "$sshcfg" -o LogLevel=ERROR -q 'default:/tmp/gw-results/*' "$results/" || vm_say "no junit files to copy"
vssh 'sudo journalctl -b --no-pager' > "$results/vm-journal.log" 2>&1 || true

vm_say "summary (VM kernel $kernel, driver $GLASSWING_VM_DRIVER):"
for l in "${timings[@]}"; do echo "  $l"; done
if [ ${#failed[@]} -gt 0 ]; then
  vm_say "FAILED: ${failed[*]} (logs in results/vm/)"
  exit 1
fi
vm_say "all steps passed (logs and junit xml in results/vm/)"
