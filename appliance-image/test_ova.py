#!/usr/bin/env python3
"""Tests of the OVA checker (ova.py check): a good OVA passes; every kind of damage it must catch
fails it. Needs qemu-img (a real streamOptimized VMDK). Run: python3 appliance-image/test_ova.py"""
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ova  # noqa: E402

CAP = 8 * 1024 * 1024


def members(path):
    with tarfile.open(path) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]


def write(path, items):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in items:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))


def remanifest(items):
    """Recomputes the manifest, so that a test damages only what it means to."""
    out, lines = [], []
    for n, d in items:
        if not n.endswith(".mf"):
            lines.append(f"SHA256({n})= {hashlib.sha256(d).hexdigest()}")
    for n, d in items:
        out.append((n, ("\n".join(lines) + "\n").encode() if n.endswith(".mf") else d))
    return out


class OvaCheck(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("qemu-img") is None:
            raise RuntimeError("qemu-img is required (make image-deps)")
        cls.dir = tempfile.mkdtemp(prefix="ova-test-")
        raw = os.path.join(cls.dir, "d.raw")
        with open(raw, "wb") as f:
            f.truncate(CAP)
            f.seek(1 << 20)
            f.write(os.urandom(4096))
        cls.vmdk = os.path.join(cls.dir, "t-disk1.vmdk")
        subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                        raw, cls.vmdk], check=True)
        cls.good = os.path.join(cls.dir, "t.ova")
        subprocess.run([sys.executable, ova.__file__, "build", "--name", "t", "--version", "1",
                        "--vmdk", cls.vmdk, "--capacity", str(CAP), "--out", cls.good], check=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def variant(self, items):
        p = os.path.join(self.dir, "v.ova")
        write(p, items)
        return ova.check(p, CAP)

    def test_good_ova_passes(self):
        self.assertEqual(ova.check(self.good, CAP), [])
        self.assertEqual([n for n, _ in members(self.good)], ["t.ovf", "t.mf", "t-disk1.vmdk"])

    def test_cli_exit_codes(self):
        self.assertEqual(subprocess.run([sys.executable, ova.__file__, "check", self.good]).returncode, 0)
        self.assertNotEqual(subprocess.run([sys.executable, ova.__file__, "check", self.good,
                                            "--capacity", str(CAP + 512)],
                                           stderr=subprocess.DEVNULL).returncode, 0)

    def test_damaged_disk_fails_the_manifest(self):
        items = members(self.good)
        n, d = items[2]
        items[2] = (n, d[:-1] + bytes([d[-1] ^ 1]))
        self.assertTrue(any("does not match the manifest" in p for p in self.variant(items)))

    def test_ovf_not_first_fails(self):
        items = members(self.good)
        self.assertTrue(self.variant([items[1], items[0], items[2]]))

    def test_malformed_xml_fails(self):
        items = members(self.good)
        items[0] = ("t.ovf", items[0][1].replace(b"</Envelope>", b""))
        self.assertTrue(any("XML" in p for p in self.variant(remanifest(items))))

    def test_one_nic_fails(self):
        items = members(self.good)
        ovf = items[0][1].decode()
        ovf = re.sub(r"<Item>(?:(?!</Item>).)*<rasd:Connection>mesh</rasd:Connection>.*?</Item>\s*", "",
                     ovf, flags=re.S)
        items[0] = ("t.ovf", ovf.encode())
        self.assertTrue(any("NIC" in p for p in self.variant(remanifest(items))))

    def test_wrong_disk_size_fails(self):
        items = members(self.good)
        size = len(items[2][1])
        items[0] = ("t.ovf", items[0][1].replace(f'ovf:size="{size}"'.encode(), f'ovf:size="{size + 1}"'.encode()))
        self.assertTrue(any("File size" in p for p in self.variant(remanifest(items))))

    def test_wrong_capacity_fails(self):
        items = members(self.good)
        items[0] = ("t.ovf", items[0][1].replace(f'ovf:capacity="{CAP}"'.encode(), b'ovf:capacity="1024"'))
        self.assertTrue(any("capacity" in p for p in self.variant(remanifest(items))))

    def test_file_missing_from_manifest_fails(self):
        items = members(self.good)
        items[1] = ("t.mf", b"\n".join(items[1][1].splitlines()[:1]) + b"\n")
        self.assertTrue(any("not in the manifest" in p for p in self.variant(items)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
