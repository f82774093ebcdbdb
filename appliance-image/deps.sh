#!/usr/bin/env bash
# Installs what `make image` and `make vm-test` need on a Debian 12 host (idempotent).
# Kept apart from scripts/deps.sh so that plain `make test` does not pull in QEMU.
set -euo pipefail
log() { printf '[image-deps] %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "[image-deps] must run as root (apt)" >&2; exit 1; }

missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
install() {
  local m
  m=$(missing "$@")
  [ -z "$m" ] && return 0
  log "apt-get install $(echo $m)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $m >/dev/null
}

# mmdebstrap builds the root file system from Debian's packages; mtools/dosfstools the ESP (this
# kind of kernel cannot mount vfat); fdisk (sfdisk) the GPT; grub-pc-bin and grub-efi-amd64-bin
# the two boot loaders (grub-mkimage, no grub-install: nothing is mounted); qemu-utils (qemu-img)
# the qcow2 and VMDK; qemu-system-x86 and ovmf boot the image in the VM tests; e2fsprogs builds
# the ext4 root from a directory; python3 checks the OVA; etcd is the VM test's Cluster Mesh API.
# qemu-system-x86 replaces a backported qemu-utils: asking for it together with
# cloud-image-utils in one apt call fails ("held broken packages"), so these are two calls.
install mmdebstrap dosfstools mtools fdisk grub-pc-bin grub-efi-amd64-bin grub2-common \
  e2fsprogs qemu-system-x86 ovmf python3 openssl etcd-server etcd-client iproute2 curl xz-utils
install cloud-image-utils genisoimage
log "ok"
