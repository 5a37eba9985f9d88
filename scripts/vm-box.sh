#!/usr/bin/env bash
# Builds a local Debian 12 Vagrant box for the libvirt provider, from Debian's package
# archive only (mmdebstrap), so that `vagrant up` and its provisioning need no network
# from inside the VM: the kernel with its matching headers, systemd, ssh, the vagrant
# user with Vagrant's insecure key, every Debian package scripts/install.sh asks for,
# and a wheelhouse of the Python wheels the venv needs (/var/lib/glasswing/wheelhouse,
# which install.sh uses with --no-index when it is there).
#   scripts/vm-box.sh            build $VM_DIR/glasswing-debian12.box (if its inputs changed)
#   scripts/vm-box.sh --force    build it again anyway
# Output: /var/tmp/glasswing-vm (GLASSWING_VM_DIR), never the work tree.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
VM_TAG=vm-box
. "$here/scripts/vm-lib.sh"
vm_need_root

force=0; [ "${1:-}" = --force ] && force=1
want=$(vm_box_inputs_sha "$here")
if [ $force = 0 ] && [ -s "$VM_BOX_FILE" ] && [ "$(cat "$VM_BOX_FILE.sha" 2>/dev/null)" = "$want" ]; then
  vm_say "up to date: $VM_BOX_FILE"
  exit 0
fi

vm_host_pkgs "${VM_HOST_PKGS[@]}"
t0=$(date +%s)
mkdir -p "$VM_DIR"
work=$VM_DIR/build
mnt=$work/root
raw=$work/disk.raw
loop=""
cleanup() {
  set +e
  for m in dev/pts dev proc sys run; do mountpoint -q "$mnt/$m" && umount -l "$mnt/$m"; done
  mountpoint -q "$mnt" && umount "$mnt"
  if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null; losetup -d "$loop"; fi
  rm -rf "$work"
}
trap cleanup EXIT
cleanup; mkdir -p "$mnt"

# --- Python wheels for the venv (Debian 12's Python 3.11 on the host = the VM's) ----
wh=$VM_DIR/wheelhouse
rm -rf "$wh"; mkdir -p "$wh"
vm_say "downloading wheels for requirements.txt (cp311, x86_64)"
/usr/bin/python3 -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$wh" \
  -r "$here/requirements.txt" pip setuptools wheel 2>&1 | { grep -v 'is ignored: it is neither' || true; } \
  || vm_die "pip download failed"

# --- Debian packages: install.sh's list, one source of truth -----------------------
mapfile -t proj < <(sed -n 's/^pkgs=(\(.*\))$/\1/p' "$here/scripts/install.sh" | tr ' ' '\n' | grep .)
[ ${#proj[@]} -gt 5 ] || vm_die "could not read the package list (pkgs=(...)) from scripts/install.sh"
base=(systemd-sysv udev dbus linux-image-amd64 linux-headers-amd64 grub-pc initramfs-tools
      openssh-server sudo rsync ca-certificates python3 kmod e2fsprogs netbase)
include=$(printf '%s,' "${base[@]}" "${proj[@]}"); include=${include%,}

# The host's own apt sources (its mirror or proxy) and options that matter to fetching.
mirror=()
if [ -s /etc/apt/sources.list.d/debian.sources ]; then mirror=(/etc/apt/sources.list.d/debian.sources)
elif grep -qs '^deb ' /etc/apt/sources.list; then mirror=(/etc/apt/sources.list)
fi
aptopts=(--aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Retries "3"')
while IFS= read -r line; do aptopts+=(--aptopt="$line"); done < <(apt-config dump | grep -i '^Acquire::[a-z]*::Proxy' || true)

# --- Disk: one MBR partition, ext4. The host kernel may lack MSDOS partition parsing,
# so the partition device is added with partx -a, not losetup -P. ------------------
size_gb=20
truncate -s ${size_gb}G "$raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
loop=$(losetup -f --show "$raw")
partx -a "$loop"
[ -b "${loop}p1" ] || vm_die "no ${loop}p1 after partx -a"
mkfs.ext4 -q -L glasswing-root "${loop}p1"
uuid=$(blkid -s UUID -o value "${loop}p1")
mount "${loop}p1" "$mnt"
rmdir "$mnt/lost+found"

vm_say "mmdebstrap: Debian 12 with ${#proj[@]} project packages (this downloads about 400 MB)"
log=$VM_DIR/mmdebstrap.log
if ! mmdebstrap --variant=important --architectures=amd64 "${aptopts[@]}" \
       --include="$include" bookworm "$mnt" "${mirror[@]}" > "$log" 2>&1; then
  tail -n 30 "$log" >&2; vm_die "mmdebstrap failed (log: $log)"
fi
[ -x "$mnt/usr/bin/python3" ] && [ -e "$mnt/usr/sbin/sshd" ] || vm_die "mmdebstrap did not complete"
mklost+found "$mnt" >/dev/null 2>&1 || true
mkdir -p "$mnt/lost+found"

# --- Configure the system -------------------------------------------------------------
kver=$(ls "$mnt/lib/modules" | sort -V | tail -n1)
[ -e "$mnt/lib/modules/$kver/build/include" ] || vm_die "no headers for the box's kernel $kver"
vm_say "kernel $kver with its headers"
echo glasswing > "$mnt/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 glasswing\n::1 localhost ip6-localhost ip6-loopback\n' > "$mnt/etc/hosts"
printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$uuid" > "$mnt/etc/fstab"
mkdir -p "$mnt/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' > "$mnt/etc/systemd/network/80-dhcp.network"
# The management network answers DHCP only; no online-wait for links that never come.
mkdir -p "$mnt/etc/systemd/system/systemd-networkd-wait-online.service.d"
printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60\n' \
  > "$mnt/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf"
cat > "$mnt/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
EOF
printf 'UseDNS no\n' > "$mnt/etc/ssh/sshd_config.d/vagrant.conf"

for m in dev dev/pts proc sys run; do mkdir -p "$mnt/$m"; mount --bind "/$m" "$mnt/$m"; done
in_root() { chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
in_root systemctl enable -q systemd-networkd ssh
# The project's packages bring daemons (etcd, haproxy, ...) that the tests start themselves,
# on their own ports, as on a host without systemd: don't start Debian's copies at boot
# (units of those packages and of what they depend on directly, nginx-common say).
deps=$(in_root dpkg-query -W -f='${Depends},' "${proj[@]}" | tr ',|' '\n\n' | sed 's/(.*)//; s/:any//; s/ //g' | grep . | sort -u)
for p in "${proj[@]}" $deps; do
  for u in $(in_root dpkg -L "$p" 2>/dev/null | sed -n 's|^/lib/systemd/system/\([^/@]*\.service\)$|\1|p'); do
    case $u in systemd-*|ssh*|dbus*|getty*) continue ;; esac
    in_root systemctl disable -q "$u" 2>/dev/null && vm_say "not started at boot: $u ($p)"
  done
done
in_root useradd -m -s /bin/bash -G sudo vagrant
echo vagrant:vagrant | in_root chpasswd
printf 'vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n' > "$mnt/etc/sudoers.d/vagrant"
chmod 0440 "$mnt/etc/sudoers.d/vagrant"
key=$(find /usr/share /opt -path '*vagrant*/keys/vagrant.pub' 2>/dev/null | head -n1)
[ -n "$key" ] || vm_die "Vagrant's insecure public key (keys/vagrant.pub) not found"
install -d -m 0700 -o 1000 -g 1000 "$mnt/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$key" "$mnt/home/vagrant/.ssh/authorized_keys"
in_root grub-install --target=i386-pc --recheck "$loop" >/dev/null 2>&1 \
  || in_root grub-install --target=i386-pc "$loop"
in_root update-grub 2>/dev/null
# No udev here, so no /dev/disk/by-uuid: grub-mkconfig wrote the loop device. Boot by UUID.
sed -i "s|root=${loop}p1|root=UUID=$uuid|g" "$mnt/boot/grub/grub.cfg"
grep -q "root=UUID=$uuid" "$mnt/boot/grub/grub.cfg" || vm_die "grub.cfg does not boot root=UUID=$uuid"
# grub-pc's debconf: later kernel updates (if any) install grub to the VM's disk.
printf 'grub-pc grub-pc/install_devices multiselect /dev/vda\n' | in_root debconf-set-selections

install -d "$mnt/var/lib/glasswing"
cp -r "$wh" "$mnt/var/lib/glasswing/wheelhouse"
in_root apt-get clean
: > "$mnt/etc/machine-id"   # a new one at first boot, per VM
rm -f "$mnt/var/lib/dbus/machine-id"
for m in dev/pts dev proc sys run; do umount -l "$mnt/$m"; done
used=$(df -h --output=used "$mnt" | tail -n1 | tr -d ' ')
fstrim "$mnt" 2>/dev/null || true   # freed blocks (apt's downloads) become holes, not image data
umount "$mnt"
partx -d "$loop"; losetup -d "$loop"; loop=""

# --- Box: metadata.json + Vagrantfile + box.img (qcow2) -----------------------------
vm_say "converting to qcow2 ($used used in the root filesystem)"
stage=$work/box; mkdir -p "$stage"
qemu-img convert -O qcow2 "$raw" "$stage/box.img"
rm -f "$raw"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' $size_gb > "$stage/metadata.json"
cat > "$stage/Vagrantfile" <<'EOF'
# Glasswing's local Debian 12 box (scripts/vm-box.sh). Settings are in the project's vagrant/Vagrantfile.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
printf '{"kernel": "%s", "built": "%s", "inputs": "%s"}\n' "$kver" "$(date -u +%FT%TZ)" "$want" > "$stage/info.json"
tar -C "$stage" -cf "$VM_BOX_FILE.tmp" metadata.json Vagrantfile info.json box.img
mv "$VM_BOX_FILE.tmp" "$VM_BOX_FILE"
echo "$want" > "$VM_BOX_FILE.sha"
vm_say "built $VM_BOX_FILE ($(du -h "$VM_BOX_FILE" | cut -f1), kernel $kver) in $(( $(date +%s) - t0 ))s"
