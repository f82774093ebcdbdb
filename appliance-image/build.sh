#!/usr/bin/env bash
# Builds the meshgw appliance from Debian 12 packages and the workspace's release binary, without
# Docker and without mounting anything (this kind of host cannot mount vfat or iso9660):
#
#   mmdebstrap (cached base tree) -> overlay (meshgw, units, sysctls, cloud-init) ->
#   mkfs.ext4 -d (root) + mtools (ESP with GRUB EFI) + grub-mkimage i386-pc (BIOS boot partition)
#   -> one GPT disk (BIOS and UEFI) -> .raw, .qcow2, .vmdk (streamOptimized) -> .ova, SHA256SUMS
#
# Usage: appliance-image/build.sh [--binary PATH] ; outputs in appliance-image/out/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="${IMAGE_OUT:-$HERE/out}"
CACHE="$OUT/cache"
BIN="${MESHGW_BIN:-$ROOT/target/release/meshgw}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)"
NAME="meshgw-$VERSION"
ROOT_LABEL=meshgw-root

log() { printf '[image %(%T)T] %s\n' -1 "$*"; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap, ownership in the root file system)"
[ -x "$BIN" ] || die "no daemon binary at $BIN (cargo build --release -p meshgw)"
for t in mmdebstrap mkfs.ext4 mkfs.vfat mcopy mmd sfdisk grub-mkimage qemu-img python3; do
  command -v "$t" >/dev/null || die "missing $t (run: make image-deps)"
done
[ -n "$VERSION" ] || die "no workspace version in Cargo.toml"

# The Debian packages of the appliance. cloud-init (first-boot configuration) and its Python are
# most of the size; the kernel's initramfs keeps the generic driver set ("most") so the image boots
# on virtio, SCSI (VMware lsilogic/pvscsi), AHCI and NVMe disks.
PACKAGES=(
  systemd systemd-sysv udev dbus kmod linux-image-amd64 initramfs-tools zstd
  iproute2 iputils-ping ethtool netbase procps less ca-certificates
  cloud-init cloud-guest-utils isc-dhcp-client openssh-server sudo
)
SUITES=("deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SECURITY_MIRROR bookworm-security main"
        "deb $MIRROR bookworm-backports main")
# The kernel comes from bookworm-backports (6.12 LTS): Debian 12's own 6.1 verifier rejects the
# XDP programs (measured: the program load fails in the verifier on 6.1.0-56). Only the kernel
# and its boot tooling are pinned there; everything else is Debian 12 proper.
KERNEL_PIN='Package: linux-image-* linux-base initramfs-tools initramfs-tools-core initramfs-tools-bin klibc-utils libklibc firmware-*
Pin: release n=bookworm-backports
Pin-Priority: 990
'


mkdir -p "$OUT" "$CACHE"
T0=$(date +%s)
# A failed build leaves no output behind (make would take a partial one for up to date).
trap 'rc=$?; [ $rc -eq 0 ] || rm -f "$OUT/$NAME".qcow2 "$OUT/$NAME".raw "$OUT/$NAME".ova "$OUT/SHA256SUMS"' EXIT

# --- 1. The base tree (Debian packages only), cached by its package list and this script's recipe.
base_key=$(printf '%s\n' "${PACKAGES[@]}" "${SUITES[@]}" "$KERNEL_PIN" "$(sed -n '/^base_recipe()/,/^}/p' "$0")" | sha256sum | cut -c1-16)
base_tar="$CACHE/base-$base_key.tar"
base_recipe() {
  export KERNEL_PIN
  # Docs, man pages and translations are not needed on an appliance.
  mmdebstrap --variant=minbase --mode=root --format=tar \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --setup-hook='mkdir -p "$1/etc/apt/preferences.d" && printf "%s" "$KERNEL_PIN" > "$1/etc/apt/preferences.d/meshgw-kernel"' \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && printf "COMPRESS=zstd\n" > "$1/etc/initramfs-tools/conf.d/meshgw.conf"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*_key* && : > "$1/etc/machine-id" && rm -f "$1/var/lib/dbus/machine-id"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    bookworm "$1" "${SUITES[@]}"
}
if [ ! -s "$base_tar" ]; then
  log "mmdebstrap: Debian 12 base (${#PACKAGES[@]} packages) -> $base_tar"
  rm -f "$CACHE"/base-*.tar
  base_recipe "$base_tar.tmp" >"$OUT/mmdebstrap.log" 2>&1 || { tail -n 30 "$OUT/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $OUT/mmdebstrap.log)"; }
  mv "$base_tar.tmp" "$base_tar"
else
  log "base tree from cache ($base_tar)"
fi

# --- 2. The appliance tree: base + meshgw + overlay.
WORK="$OUT/work"
rm -rf "$WORK"; mkdir -p "$WORK/root"
R="$WORK/root"
tar -C "$R" -xf "$base_tar"
install -D -m 0755 "$BIN" "$R/usr/bin/meshgw"
strip --strip-debug "$R/usr/bin/meshgw"
cp -a "$HERE/overlay/." "$R/"
install -D -m 0644 "$ROOT/config/default.toml" "$R/usr/share/meshgw/default.toml"
install -D -m 0644 "$ROOT/config/README.md" "$R/usr/share/doc/meshgw/config.md"
install -D -m 0644 "$ROOT/README.md" "$R/usr/share/doc/meshgw/README.md"
mkdir -p "$R/etc/meshgw"
echo meshgw > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tmeshgw\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
printf 'NAME="meshgw appliance"\nVERSION="%s"\n' "$VERSION" > "$R/etc/meshgw/appliance-release"

# Boot identity of this build: the root file system's UUID, found by both boot loaders.
ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
cat > "$R/etc/fstab" <<FSTAB
UUID=$ROOT_UUID / ext4 defaults,noatime,errors=remount-ro 0 1
bpf /sys/fs/bpf bpf defaults 0 0
FSTAB

# Services: the gateway, the dashboard on tty1 and ttyS0 in place of their login prompts,
# systemd-networkd for the NICs (cloud-init renders to it), the host keys' generation.
SYSTEMCTL=(systemctl --root="$R" --quiet)
"${SYSTEMCTL[@]}" enable meshgw.service meshgw-console@tty1.service meshgw-console@ttyS0.service \
  systemd-networkd.service
"${SYSTEMCTL[@]}" mask getty@tty1.service serial-getty@ttyS0.service \
  systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  e2scrub_reap.service fstrim.timer 2>/dev/null || true
# No ifupdown in the image: cloud-init renders its network config for systemd-networkd.
rm -f "$R/etc/network/interfaces"

# Kernel and initramfs, as Debian installed them.
KVER=$(basename "$(ls -d "$R"/lib/modules/* | sort -V | tail -n1)")
[ -f "$R/boot/vmlinuz-$KVER" ] && [ -f "$R/boot/initrd.img-$KVER" ] || die "no kernel/initrd for $KVER in the tree"
CMDLINE="root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0 quiet loglevel=3 systemd.show_status=auto"

# GRUB, one configuration for both firmwares: on the root file system, found by UUID.
mkdir -p "$R/boot/grub"
cat > "$R/boot/grub/grub.cfg" <<GRUBCFG
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout_style=hidden
set timeout=0
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root $ROOT_UUID
menuentry 'meshgw $VERSION' {
  linux /boot/vmlinuz-$KVER $CMDLINE
  initrd /boot/initrd.img-$KVER
}
GRUBCFG
cp -a /usr/lib/grub/i386-pc /usr/lib/grub/x86_64-efi "$R/boot/grub/" 2>/dev/null || true
cat > "$WORK/early.cfg" <<EARLY
search --no-floppy --fs-uuid --set=root $ROOT_UUID
set prefix=(\$root)/boot/grub
configfile (\$root)/boot/grub/grub.cfg
EARLY
GRUB_MODS="part_gpt ext2 search search_fs_uuid normal linux configfile serial terminal echo test gzio"
grub-mkimage -O i386-pc -o "$WORK/core.img" -p /boot/grub -c "$WORK/early.cfg" biosdisk $GRUB_MODS
grub-mkimage -O x86_64-efi -o "$WORK/BOOTX64.EFI" -p /boot/grub -c "$WORK/early.cfg" $GRUB_MODS fat efi_gop efi_uga all_video

# --- 3. File systems, without mounting.
used_mib=$(du -sm --apparent-size "$R" | cut -f1)
ROOT_MIB=$(( (used_mib * 13 / 10 + 384 + 63) / 64 * 64 ))
log "root file system: ${used_mib} MiB of files in a ${ROOT_MIB} MiB ext4"
rm -f "$WORK/root.img"
mkfs.ext4 -q -F -L "$ROOT_LABEL" -U "$ROOT_UUID" -E lazy_itable_init=0 -O ^metadata_csum_seed -d "$R" "$WORK/root.img" "${ROOT_MIB}M"

ESP_MIB=32
mkfs.vfat -n MESHGW-ESP -C "$WORK/esp.img" $(( ESP_MIB * 1024 )) >/dev/null
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/esp.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

# --- 4. One GPT disk: BIOS boot partition (GRUB core.img), ESP, root.
BIOSBOOT_START=2048; BIOSBOOT_SECTORS=2048                   # 1 MiB at 1 MiB
ESP_START=4096; ESP_SECTORS=$(( ESP_MIB * 2048 ))
ROOT_START=$(( ESP_START + ESP_SECTORS )); ROOT_SECTORS=$(( ROOT_MIB * 2048 ))
DISK_MIB=$(( (ROOT_START + ROOT_SECTORS) / 2048 + 1 ))
RAW="$OUT/$NAME.raw"
rm -f "$RAW"; truncate -s "${DISK_MIB}M" "$RAW"
sfdisk -q --no-reread --no-tell-kernel "$RAW" <<PARTS
label: gpt
start=$BIOSBOOT_START, size=$BIOSBOOT_SECTORS, type=21686148-6E49-4E4F-656E-6565644E4549, name="bios-boot"
start=$ESP_START, size=$ESP_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
start=$ROOT_START, size=$ROOT_SECTORS, type=4F68BCE3-E8CD-4DBF-96E7-FBCAF984B709, name="root"
PARTS
dd if="$WORK/esp.img" of="$RAW" bs=1M seek=$(( ESP_START / 2048 )) conv=notrunc,sparse status=none
dd if="$WORK/root.img" of="$RAW" bs=1M seek=$(( ROOT_START / 2048 )) conv=notrunc,sparse status=none
python3 "$HERE/grub-bios-setup.py" "$RAW" /usr/lib/grub/i386-pc/boot.img "$WORK/core.img" "$BIOSBOOT_START" "$BIOSBOOT_SECTORS"

# --- 5. Formats: qcow2 (compressed) and a streamOptimized VMDK for the OVA, in parallel.
log "converting: qcow2, vmdk"
QCOW="$OUT/$NAME.qcow2"; VMDK="$WORK/$NAME-disk1.vmdk"
rm -f "$QCOW" "$VMDK"
qemu-img convert -c -O qcow2 "$RAW" "$QCOW" & p1=$!
qemu-img convert -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic "$RAW" "$VMDK" & p2=$!
wait $p1; wait $p2

# --- 6. OVA: descriptor, manifest, disk; tar'd with the .ovf first.
python3 "$HERE/ova.py" build --name "$NAME" --version "$VERSION" --vmdk "$VMDK" \
  --capacity "$(stat -c %s "$RAW")" --out "$OUT/$NAME.ova"
rm -rf "$R" "$WORK/root.img" "$WORK/esp.img"

# --- 7. SHA256SUMS and the sizes.
( cd "$OUT" && sha256sum "$NAME.qcow2" "$NAME.raw" "$NAME.ova" > SHA256SUMS )
{
  echo "version=$VERSION"
  echo "kernel=$KVER"
  echo "root_uuid=$ROOT_UUID"
  for f in "$NAME.qcow2" "$NAME.raw" "$NAME.ova"; do
    echo "$f bytes=$(stat -c %s "$OUT/$f") allocated=$(( $(stat -c %b "$OUT/$f") * $(stat -c %B "$OUT/$f") ))"
  done
  echo "build_seconds=$(( $(date +%s) - T0 ))"
} > "$OUT/build-info.txt"
ln -sfn "$NAME.qcow2" "$OUT/meshgw.qcow2"
cat "$OUT/build-info.txt"
log "done: $OUT/$NAME.{qcow2,raw,ova} and SHA256SUMS"
