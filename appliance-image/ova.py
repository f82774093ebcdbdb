#!/usr/bin/env python3
"""The appliance's OVA: build it (OVF 1.0 descriptor, SHA-256 manifest, streamOptimized VMDK,
tar'd with the .ovf first) and check one.

  ova.py build --name N --version V --vmdk FILE --capacity BYTES --out N.ova
  ova.py check FILE.ova [--capacity BYTES]      exit 0 only when every check holds
"""
import argparse
import hashlib
import io
import os
import struct
import sys
import tarfile
import xml.etree.ElementTree as ET

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW = "http://www.vmware.com/schema/ovf"
STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
VCPUS = 2
MEMORY_MIB = 2048
NICS = [("legacy", "The legacy L3 network (first NIC, eth0)"),
        ("mesh", "The Cluster Mesh underlay towards the Cilium nodes (second NIC, eth1)")]


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def item(fields):
    # CIM requires the rasd elements in alphabetical order.
    body = "".join(f"        <rasd:{k}>{esc(str(v))}</rasd:{k}>\n" for k, v in sorted(fields.items()))
    return f"      <Item>\n{body}      </Item>\n"


def descriptor(name, version, vmdk_name, vmdk_size, capacity):
    items = [
        item({"AllocationUnits": "hertz * 10^6", "Description": "Number of virtual CPUs",
              "ElementName": f"{VCPUS} virtual CPUs", "InstanceID": 1, "ResourceType": 3,
              "VirtualQuantity": VCPUS}),
        item({"AllocationUnits": "byte * 2^20", "Description": "Memory size",
              "ElementName": f"{MEMORY_MIB} MB of memory", "InstanceID": 2, "ResourceType": 4,
              "VirtualQuantity": MEMORY_MIB}),
        item({"Address": 0, "Description": "SCSI controller", "ElementName": "SCSI controller 0",
              "InstanceID": 3, "ResourceSubType": "lsilogic", "ResourceType": 6}),
        item({"AddressOnParent": 0, "ElementName": "disk0", "HostResource": "ovf:/disk/vmdisk1",
              "InstanceID": 4, "Parent": 3, "ResourceType": 17}),
    ]
    for i, (net, _) in enumerate(NICS):
        items.append(item({"AddressOnParent": i + 7, "AutomaticAllocation": "true",
                           "Connection": net, "Description": f"VmxNet3 ethernet adapter on {net}",
                           "ElementName": f"ethernet{i} ({net})", "InstanceID": 5 + i,
                           "ResourceSubType": "VmxNet3", "ResourceType": 10}))
    nets = "".join(f'    <Network ovf:name="{n}">\n      <Description>{esc(d)}</Description>\n    </Network>\n'
                   for n, d in NICS)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="{OVF}" xmlns:ovf="{OVF}" xmlns:rasd="{RASD}" xmlns:vssd="{VSSD}" xmlns:vmw="{VMW}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{esc(vmdk_name)}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{STREAM}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The logical networks: legacy (first NIC) and mesh (second NIC)</Info>
{nets}  </NetworkSection>
  <VirtualSystem ovf:id="{esc(name)}">
    <Info>meshgw transit gateway appliance</Info>
    <Name>{esc(name)}</Name>
    <ProductSection>
      <Info>Product information</Info>
      <Product>meshgw transit gateway</Product>
      <Version>{esc(version)}</Version>
    </ProductSection>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian12_64Guest">
      <Info>Debian GNU/Linux 12 (64-bit)</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>{VCPUS} vCPU, {MEMORY_MIB} MiB, one disk, two NICs; boots with BIOS or UEFI</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{esc(name)}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
{"".join(items)}    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def build(a):
    vmdk_name = os.path.basename(a.vmdk)
    vmdk_size = os.path.getsize(a.vmdk)
    ovf_name, mf_name = f"{a.name}.ovf", f"{a.name}.mf"
    ovf = descriptor(a.name, a.version, vmdk_name, vmdk_size, a.capacity).encode()
    h = hashlib.sha256()
    with open(a.vmdk, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    mf = f"SHA256({ovf_name})= {sha256(ovf)}\nSHA256({vmdk_name})= {h.hexdigest()}\n".encode()
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as t:
        for n, data in ((ovf_name, ovf), (mf_name, mf)):
            ti = tarfile.TarInfo(n)
            ti.size, ti.mode = len(data), 0o644
            t.addfile(ti, io.BytesIO(data))
        ti = t.gettarinfo(a.vmdk, arcname=vmdk_name)
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mode = 0o644
        with open(a.vmdk, "rb") as f:
            t.addfile(ti, f)
    os.replace(tmp, a.out)


def check(path, capacity=None):
    """Returns a list of problems (empty: the OVA is good)."""
    bad = []
    with tarfile.open(path, "r:") as t:
        members = t.getmembers()
        names = [m.name for m in members]
        if not names or not names[0].endswith(".ovf"):
            return [f"the first member is {names[:1]}, not the .ovf descriptor"]
        files = {m.name: t.extractfile(m).read() for m in members if m.isfile()}
    ovf_name = names[0]
    try:
        root = ET.fromstring(files[ovf_name])
    except ET.ParseError as e:
        return [f"{ovf_name}: not well-formed XML: {e}"]
    ns = {"ovf": OVF, "rasd": RASD}
    q = lambda a: f"{{{OVF}}}{a}"
    if root.tag != q("Envelope") or root.get(q("version")) != "1.0":
        bad.append(f"root element {root.tag} version {root.get(q('version'))}, expected an OVF 1.0 Envelope")
    refs = {f.get(q("id")): f for f in root.findall("ovf:References/ovf:File", ns)}
    disks = root.findall("ovf:DiskSection/ovf:Disk", ns)
    if len(disks) != 1:
        bad.append(f"{len(disks)} disks in DiskSection, expected 1")
    for d in disks:
        ref = refs.get(d.get(q("fileRef")))
        if ref is None:
            bad.append(f"disk {d.get(q('diskId'))} references no File")
            continue
        href = ref.get(q("href"))
        if href not in files:
            bad.append(f"the disk file {href} is not in the OVA")
            continue
        if int(ref.get(q("size"), -1)) != len(files[href]):
            bad.append(f"File size {ref.get(q('size'))} != {len(files[href])} bytes of {href}")
        if d.get(q("format")) != STREAM:
            bad.append(f"disk format {d.get(q('format'))}, expected streamOptimized")
        data = files[href]
        if data[:4] != b"KDMV" or b'createType="streamOptimized"' not in data[:65536]:
            bad.append(f"{href} is not a streamOptimized VMDK")
        else:
            vmdk_cap = struct.unpack_from("<Q", data, 12)[0] * 512
            cap = int(d.get(q("capacity"), -1))
            if cap != vmdk_cap:
                bad.append(f"Disk capacity {cap} != the VMDK's {vmdk_cap}")
            if capacity is not None and cap != capacity:
                bad.append(f"Disk capacity {cap} != the raw image's {capacity}")
        hosts = [i for i in root.iter(f"{{{RASD}}}HostResource") if i.text == f"ovf:/disk/{d.get(q('diskId'))}"]
        if not hosts:
            bad.append("no hardware item attaches the disk")
    items = root.findall(".//ovf:VirtualHardwareSection/ovf:Item", ns)
    by_type = {}
    for i in items:
        by_type.setdefault(i.findtext("rasd:ResourceType", namespaces=ns), []).append(i)
    nics = by_type.get("10", [])
    nets = {n.get(q("name")) for n in root.findall("ovf:NetworkSection/ovf:Network", ns)}
    conns = [n.findtext("rasd:Connection", namespaces=ns) for n in nics]
    if len(nics) != 2 or len(set(conns)) != 2 or not set(conns) <= nets:
        bad.append(f"NICs connected to {conns}, networks {sorted(nets)}: expected two NICs on two declared networks")
    cpu = [i.findtext("rasd:VirtualQuantity", namespaces=ns) for i in by_type.get("3", [])]
    mem = [(i.findtext("rasd:VirtualQuantity", namespaces=ns), i.findtext("rasd:AllocationUnits", namespaces=ns))
           for i in by_type.get("4", [])]
    if cpu != ["2"]:
        bad.append(f"vCPUs {cpu}, expected ['2']")
    if mem != [("2048", "byte * 2^20")]:
        bad.append(f"memory {mem}, expected 2048 MiB")
    # The manifest: one SHA-256 line per other file, each matching.
    mfs = [n for n in names if n.endswith(".mf")]
    if len(mfs) != 1:
        bad.append(f"{len(mfs)} manifests, expected 1")
    else:
        listed = {}
        for line in files[mfs[0]].decode().splitlines():
            if not line.strip():
                continue
            try:
                algo_file, digest = line.split("= ", 1)
                algo, fname = algo_file.split("(", 1)
                fname = fname.rstrip(")")
            except ValueError:
                bad.append(f"manifest line not 'SHA256(file)= hex': {line!r}")
                continue
            if algo != "SHA256":
                bad.append(f"manifest uses {algo}, expected SHA256")
            listed[fname] = digest.strip()
        for n in names:
            if n == mfs[0]:
                continue
            if n not in listed:
                bad.append(f"{n} is not in the manifest")
            elif sha256(files[n]) != listed[n]:
                bad.append(f"SHA-256 of {n} does not match the manifest")
        for n in set(listed) - set(names):
            bad.append(f"the manifest lists {n}, which is not in the OVA")
    return bad


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--name", required=True)
    b.add_argument("--version", required=True)
    b.add_argument("--vmdk", required=True)
    b.add_argument("--capacity", type=int, required=True)
    b.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("ova")
    c.add_argument("--capacity", type=int)
    a = p.parse_args()
    if a.cmd == "build":
        build(a)
        return 0
    problems = check(a.ova, a.capacity)
    for m in problems:
        print(f"{a.ova}: {m}", file=sys.stderr)
    if not problems:
        print(f"{a.ova}: ok (OVF 1.0, streamOptimized disk, 2 NICs, 2 vCPU, 2 GiB, manifest digests match)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
