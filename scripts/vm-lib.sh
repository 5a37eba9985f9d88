# Shared by scripts/vm-box.sh and scripts/vm-test.sh (sourced, not run).
# Host side of the test VM: packages, the libvirt daemons, the work directory.

# Build output lives outside the work tree (box files and images are large).
VM_DIR=${GLASSWING_VM_DIR:-/var/tmp/glasswing-vm}
VM_BOX_NAME=${GLASSWING_VM_BOX_NAME:-glasswing-local/debian12}
VM_BOX_FILE=$VM_DIR/glasswing-debian12.box
VM_RUN=$VM_DIR/run            # pid files of the daemons this project started

vm_say() { printf '%s: %s\n' "${VM_TAG:-vm}" "$*"; }
vm_die() { printf '%s: error: %s\n' "${VM_TAG:-vm}" "$*" >&2; exit 1; }

vm_need_root() {
  [ "$(id -u)" = 0 ] || vm_die "must run as root (libvirt, loop devices, packages)"
  command -v apt-get >/dev/null || vm_die "apt-get not found: this script supports Debian 12 hosts"
}

# Installs the Debian packages named, if any is missing.
vm_host_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  vm_say "installing host packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

VM_HOST_PKGS=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
              dnsmasq-base iptables mmdebstrap debian-archive-keyring fdisk e2fsprogs util-linux
              python3-pip rsync openssh-client)

# A hash of everything the box is made from: a change to any rebuilds it.
vm_box_inputs_sha() {
  local here=$1
  cat "$here/scripts/vm-box.sh" "$here/scripts/install.sh" "$here/requirements.txt" | sha256sum | cut -d' ' -f1
}

vm_pidalive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Starts virtlogd and libvirtd by hand when nothing else runs them (PID 1 is not
# systemd on these machines). Records what it started, so vm_libvirt_stop ends
# only those. libvirt's own "default" NAT network is kept from autostarting: it
# would switch on IP forwarding on the host, and the test VM does not use it.
vm_libvirt_start() {
  mkdir -p "$VM_RUN"
  rm -f /etc/libvirt/qemu/networks/autostart/default.xml
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    vm_say "libvirtd already running: using it"
    return 0
  fi
  if [ -d /run/systemd/system ]; then
    vm_say "starting libvirtd with systemctl"
    systemctl start virtlogd.socket libvirtd.socket libvirtd.service
    echo systemd > "$VM_RUN/started-by"
  else
    vm_say "PID 1 is not systemd: starting virtlogd and libvirtd by hand"
    mkdir -p /run/libvirt
    vm_pidalive "$VM_RUN/virtlogd.pid" || virtlogd -d -p "$VM_RUN/virtlogd.pid"
    libvirtd -d -p "$VM_RUN/libvirtd.pid"
    echo hand > "$VM_RUN/started-by"
  fi
  local i
  for i in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  vm_die "libvirtd did not answer on qemu:///system"
}

# Ends the daemons vm_libvirt_start started (by their recorded pids), and no others.
vm_libvirt_stop() {
  local by f pid i
  by=$(cat "$VM_RUN/started-by" 2>/dev/null || true)
  case $by in
    systemd) systemctl stop libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
               virtlogd.service virtlogd.socket 2>/dev/null || true ;;
    hand)
      for f in libvirtd virtlogd; do
        vm_pidalive "$VM_RUN/$f.pid" || continue
        pid=$(cat "$VM_RUN/$f.pid")
        vm_say "stopping $f (pid $pid)"
        kill "$pid"
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        rm -f "$VM_RUN/$f.pid"
      done ;;
  esac
  rm -f "$VM_RUN/started-by"
}
