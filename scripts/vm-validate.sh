#!/usr/bin/env bash
# `vagrant validate` of vagrant/Vagrantfile for both of its providers. VirtualBox is not
# installed on the test hosts, and Vagrant validates a provider's settings only when that
# provider reports itself usable, which it checks with `VBoxManage --version`: a stub that
# answers only that stands in for it here, so the virtualbox block is really checked.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export VAGRANT_CWD=$here/vagrant VAGRANT_CHECKPOINT_DISABLE=1
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
echo "vm-validate: libvirt provider"
VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate
echo "vm-validate: virtualbox provider"
if command -v VBoxManage >/dev/null; then
  VAGRANT_DEFAULT_PROVIDER=virtualbox vagrant validate
else
  printf '#!/bin/sh\n[ "$1" = --version ] && { echo 7.0.14r161095; exit 0; }\nexit 1\n' > "$stub/VBoxManage"
  chmod +x "$stub/VBoxManage"
  PATH=$stub:$PATH VAGRANT_DEFAULT_PROVIDER=virtualbox vagrant validate
fi
echo "vm-validate: provider-independent settings (--ignore-provider)"
vagrant validate --ignore-provider
