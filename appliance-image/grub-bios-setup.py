#!/usr/bin/env python3
"""What `grub-bios-setup` does for a GPT disk with a BIOS boot partition, on an image file (no
loop device, no mount): boot.img into the MBR's code area (keeping the protective MBR's partition
table), core.img into the BIOS boot partition, and the two sector pointers patched.

usage: grub-bios-setup.py DISK BOOT_IMG CORE_IMG PART_START_LBA PART_SECTORS
"""
import struct
import sys

SECTOR = 512
KERNEL_SECTOR = 0x5C  # boot.img: LBA of core.img's first sector (u64)
DRIVE_CHECK = 0x66  # boot.img: `jmp` over the boot-drive check; nop'ed for hard disks as grub does
MBR_CODE_END = 0x1B8  # boot code ends where the disk signature and partition table begin
BLOCKLIST = SECTOR - 12  # diskboot (core.img sector 0): {start u64, len u16, segment u16}


def main():
    disk, boot_path, core_path = sys.argv[1:4]
    start, sectors = int(sys.argv[4]), int(sys.argv[5])
    boot = bytearray(open(boot_path, "rb").read())
    core = bytearray(open(core_path, "rb").read())
    if len(boot) != SECTOR:
        sys.exit(f"{boot_path}: {len(boot)} bytes, expected {SECTOR}")
    n = (len(core) + SECTOR - 1) // SECTOR
    if n > sectors:
        sys.exit(f"core.img needs {n} sectors, the BIOS boot partition has {sectors}")
    b_start, b_len, b_seg = struct.unpack_from("<QHH", core, BLOCKLIST)
    if b_len != n - 1 or b_seg != 0x820:
        sys.exit(f"core.img's blocklist is not the one grub-mkimage writes ({b_start} {b_len} {b_seg:#x})")
    # The rest of core.img follows its first sector contiguously.
    struct.pack_into("<Q", core, BLOCKLIST, start + 1)
    struct.pack_into("<Q", boot, KERNEL_SECTOR, start)
    if boot[DRIVE_CHECK] != 0xEB:
        sys.exit("boot.img's drive check is not where expected")
    boot[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
    with open(disk, "r+b") as f:
        mbr = bytearray(f.read(SECTOR))
        if mbr[0x1FE:0x200] != b"\x55\xaa" or mbr[0x1C2] != 0xEE:
            sys.exit(f"{disk}: no protective MBR (write the GPT first)")
        mbr[:MBR_CODE_END] = boot[:MBR_CODE_END]
        f.seek(0)
        f.write(mbr)
        core += b"\0" * (n * SECTOR - len(core))
        f.seek(start * SECTOR)
        f.write(core)


if __name__ == "__main__":
    main()
