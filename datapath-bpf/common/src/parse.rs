//! Header parsing and in-place rewriting, written once against the [`Packet`] trait: the XDP
//! programs implement it over `xdp_md` (every access bounds-checked against `data_end`, as the
//! verifier requires) and the host tests over a byte slice.
//!
//! Verdict rules: a frame this parser does not fully understand is never rewritten. Truncated or
//! inconsistent headers are [`Parsed::Malformed`]; valid traffic we do not balance (ARP, other
//! protocols, IPv6 extension headers) is [`Parsed::Other`]. Both go to the kernel, which has the
//! final word on what is valid.

use crate::maps::{FAMILY_V4, FAMILY_V6};

/// Bounds-checked access to a packet's bytes.
pub trait Packet {
    /// Pointer to `size` bytes at `off`, if all of them lie within the packet.
    fn ptr(&self, off: usize, size: usize) -> Option<*mut u8>;
    /// The packet's length in bytes.
    fn len(&self) -> usize;
    /// Whether the packet is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a `T` (any plain-data type) at `off`.
#[inline(always)]
pub fn load<T: Copy, P: Packet>(p: &P, off: usize) -> Option<T> {
    let ptr = p.ptr(off, core::mem::size_of::<T>())?;
    // SAFETY: `ptr` points at size_of::<T>() readable bytes (checked by `Packet::ptr`) and T is
    // plain data, valid for any bit pattern.
    Some(unsafe { wide::read(ptr) })
}

/// Writes a `T` at `off`.
#[inline(always)]
pub fn store<T: Copy, P: Packet>(p: &P, off: usize, v: T) -> Option<()> {
    let ptr = p.ptr(off, core::mem::size_of::<T>())?;
    // SAFETY: as in `load`, and the packet buffer is writable.
    unsafe { wide::write(ptr, v) };
    Some(())
}

/// Unaligned packet access. On the host, `read_unaligned`/`write_unaligned`. For BPF the
/// compiler splits an unaligned access into single bytes (a 20-byte header becomes 20 loads and
/// 20 stores, a 40-byte one a call to a byte-loop `memcpy`); but the verifier accepts unaligned
/// packet access on the architectures the gateway runs on (x86-64 and arm64 have efficient
/// unaligned access, and the programs are not loaded with `BPF_F_STRICT_ALIGNMENT`), so there a
/// value is moved in 8-, 4-, 2- and 1-byte pieces through an 8-byte-aligned stack copy (stack
/// access must stay aligned).
mod wide {
    #[cfg(not(target_arch = "bpf"))]
    #[inline(always)]
    pub unsafe fn read<T: Copy>(src: *const u8) -> T {
        // SAFETY: the caller's: `src` has size_of::<T>() readable bytes.
        unsafe { (src as *const T).read_unaligned() }
    }

    #[cfg(not(target_arch = "bpf"))]
    #[inline(always)]
    pub unsafe fn write<T: Copy>(dst: *mut u8, v: T) {
        // SAFETY: the caller's: `dst` has size_of::<T>() writable bytes.
        unsafe { (dst as *mut T).write_unaligned(v) }
    }

    #[cfg(target_arch = "bpf")]
    #[repr(C, align(8))]
    struct Aligned<T>(T);

    /// Copies `n` bytes in the widest pieces (one side is the aligned stack copy).
    #[cfg(target_arch = "bpf")]
    #[inline(always)]
    #[allow(clippy::cast_ptr_alignment)]
    unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
        // SAFETY: the caller's: both ranges hold `n` bytes; the stack side is 8-byte aligned
        // and BPF tolerates the packet side's misalignment (see the module's comment).
        unsafe {
            let mut i = 0;
            while i + 8 <= n {
                (dst.add(i) as *mut u64).write((src.add(i) as *const u64).read());
                i += 8;
            }
            if i + 4 <= n {
                (dst.add(i) as *mut u32).write((src.add(i) as *const u32).read());
                i += 4;
            }
            if i + 2 <= n {
                (dst.add(i) as *mut u16).write((src.add(i) as *const u16).read());
                i += 2;
            }
            if i < n {
                dst.add(i).write(src.add(i).read());
            }
        }
    }

    #[cfg(target_arch = "bpf")]
    #[inline(always)]
    pub unsafe fn read<T: Copy>(src: *const u8) -> T {
        let mut out = core::mem::MaybeUninit::<Aligned<T>>::uninit();
        // SAFETY: every byte of `out` is written from `src` (the caller's range) before it is
        // read; T is plain data.
        unsafe {
            copy(out.as_mut_ptr() as *mut u8, src, core::mem::size_of::<T>());
            out.assume_init().0
        }
    }

    #[cfg(target_arch = "bpf")]
    #[inline(always)]
    pub unsafe fn write<T: Copy>(dst: *mut u8, v: T) {
        let a = Aligned(v);
        // SAFETY: the caller's: `dst` has size_of::<T>() writable bytes.
        unsafe {
            copy(
                dst,
                &a as *const Aligned<T> as *const u8,
                core::mem::size_of::<T>(),
            )
        };
    }
}

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ outer) tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// 802.1Q tag length.
pub const VLAN_LEN: usize = 4;
/// IPv6 fixed header length.
pub const IPV6_LEN: usize = 40;
/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 fragment extension header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;

/// A parsed IP flow: where the headers are and the 5-tuple. `repr(C)` with the addresses at
/// eight-byte offsets, so that the BPF programs copy and clear them in words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Offset of the Ethernet header this parse started at.
    pub l2_off: usize,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the L4 header (meaningless for non-first fragments).
    pub l4_off: usize,
    /// Length of the IP packet according to its header (IPv4 total length, IPv6 40 + payload).
    pub l3_len: usize,
    /// Source address (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port, network order (ICMP echo: the identifier).
    pub sport: u16,
    /// Destination port, network order (ICMP echo: 0).
    pub dport: u16,
    /// The 802.1Q TCI when the frame carried one tag.
    pub vlan_tci: u16,
    /// Whether the frame carried an 802.1Q tag.
    pub vlan: bool,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// L4 protocol.
    pub proto: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Whether the packet is an IP fragment (ports are then not trusted).
    pub fragment: bool,
}

/// The outcome of a parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An IPv4/IPv6 TCP, UDP or ICMP echo packet (or a fragment of any IP packet).
    Flow(Flow),
    /// Valid, but nothing this datapath balances (ARP, IPv6 extension headers, other L4, ...).
    Other,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// Parses the Ethernet frame that starts at `base` (0 for a frame on the wire; the inner frame's
/// offset inside VXLAN).
#[inline(always)]
pub fn parse<P: Packet>(p: &P, base: usize) -> Parsed {
    let mut flow = Flow::default();
    match parse_into(p, base, &mut flow) {
        Kind::Flow => Parsed::Flow(flow),
        Kind::Other => Parsed::Other,
        Kind::Malformed => Parsed::Malformed,
    }
}

/// What a parse found, without the flow (see [`parse_into`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `out` holds the flow.
    Flow,
    /// Valid, not balanced here.
    Other,
    /// Truncated or inconsistent.
    Malformed,
}

/// Like [`parse`], but writes the flow into `out` (which the XDP programs keep in a per-CPU
/// scratch map, to stay within the 512-byte BPF stack). `out` is fully overwritten on `Flow`.
#[inline(always)]
pub fn parse_into<P: Packet>(p: &P, base: usize, out: &mut Flow) -> Kind {
    // Field by field with volatile stores: `*out = Flow::default()`, or plain stores that the
    // compiler merges back into one, become a call to a byte-loop `memset` in BPF. The
    // addresses, lengths and offsets are written by every path that returns `Flow`.
    // SAFETY: pointers to fields of `out`, valid for writes.
    unsafe {
        use core::ptr::{addr_of_mut, write_volatile};
        write_volatile(addr_of_mut!(out.l4_off), 0);
        write_volatile(addr_of_mut!(out.l3_len), 0);
        write_volatile(addr_of_mut!(out.sport), 0);
        write_volatile(addr_of_mut!(out.dport), 0);
        write_volatile(addr_of_mut!(out.vlan_tci), 0);
        write_volatile(addr_of_mut!(out.vlan), false);
        write_volatile(addr_of_mut!(out.family), 0);
        write_volatile(addr_of_mut!(out.proto), 0);
        write_volatile(addr_of_mut!(out.tcp_flags), 0);
        write_volatile(addr_of_mut!(out.fragment), false);
    }
    let Some(ethertype) = load::<[u8; 2], P>(p, base + 12) else {
        return Kind::Malformed;
    };
    let mut ethertype = u16::from_be_bytes(ethertype);
    out.l2_off = base;
    out.l3_off = base + ETH_LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = load::<[u8; 4], P>(p, base + ETH_LEN) else {
            return Kind::Malformed;
        };
        out.vlan = true;
        out.vlan_tci = u16::from_be_bytes([tag[0], tag[1]]);
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        out.l3_off = base + ETH_LEN + VLAN_LEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Kind::Other; // QinQ: not ours to balance
        }
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(p, out),
        ETH_P_IPV6 => parse_ipv6(p, out),
        _ => Kind::Other,
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet>(p: &P, flow: &mut Flow) -> Kind {
    let Some(h) = load::<[u8; 20], P>(p, flow.l3_off) else {
        return Kind::Malformed;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] >> 4 != 4 || ihl < 20 || tot_len < ihl || flow.l3_off + tot_len > p.len() {
        return Kind::Malformed;
    }
    flow.family = FAMILY_V4;
    flow.proto = h[9];
    set_v4_mapped(
        flow,
        [h[12], h[13], h[14], h[15]],
        [h[16], h[17], h[18], h[19]],
    );
    flow.l3_len = tot_len;
    flow.l4_off = flow.l3_off + ihl;
    let frag = u16::from_be_bytes([h[6], h[7]]);
    if frag & 0x3fff != 0 {
        flow.fragment = true; // MF set or a non-zero offset
        return Kind::Flow;
    }
    parse_l4(p, flow, tot_len - ihl)
}

impl Flow {
    /// [`crate::hash::flow_hash`] of the flow's 5-tuple, its addresses read as aligned words.
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        let words = |a: &[u8; 16]| {
            #[allow(clippy::cast_ptr_alignment)]
            let p = a.as_ptr() as *const u32;
            // SAFETY: `src` and `dst` are 16 bytes at eight-byte offsets of an eight-aligned
            // struct (asserted below), so four aligned words; any bit pattern is a valid u32.
            unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] }
        };
        crate::hash::flow_hash_words(
            &words(&self.src),
            &words(&self.dst),
            self.sport,
            self.dport,
            self.proto,
        )
    }
}

/// Sets the flow's addresses to `src` and `dst` IPv4-mapped, in four word stores (a plain
/// `v4_mapped` assignment becomes a byte-loop `memset` of the zero prefix in BPF).
#[inline(always)]
fn set_v4_mapped(flow: &mut Flow, src: [u8; 4], dst: [u8; 4]) {
    let word = |a: [u8; 4]| u64::from_ne_bytes([0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]);
    // SAFETY: `src` and `dst` are 16 bytes at eight-byte offsets of a `repr(C)` struct whose
    // alignment is eight (asserted below), so both halves are aligned u64 slots.
    unsafe {
        use core::ptr::{addr_of_mut, write_volatile};
        let s = addr_of_mut!(flow.src) as *mut u64;
        let d = addr_of_mut!(flow.dst) as *mut u64;
        write_volatile(s, 0);
        write_volatile(s.add(1), word(src));
        write_volatile(d, 0);
        write_volatile(d.add(1), word(dst));
    }
}
const _: () = assert!(
    core::mem::align_of::<Flow>() == 8
        && core::mem::offset_of!(Flow, src) % 8 == 0
        && core::mem::offset_of!(Flow, dst) % 8 == 0
);

#[inline(always)]
fn parse_ipv6<P: Packet>(p: &P, flow: &mut Flow) -> Kind {
    let Some(h) = load::<[u8; IPV6_LEN], P>(p, flow.l3_off) else {
        return Kind::Malformed;
    };
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if h[0] >> 4 != 6 || flow.l3_off + IPV6_LEN + payload > p.len() {
        return Kind::Malformed;
    }
    flow.family = FAMILY_V6;
    flow.proto = h[6];
    flow.src.copy_from_slice(&h[8..24]);
    flow.dst.copy_from_slice(&h[24..40]);
    flow.l3_len = IPV6_LEN + payload;
    flow.l4_off = flow.l3_off + IPV6_LEN;
    if flow.proto == IPPROTO_FRAGMENT {
        flow.fragment = true;
        return Kind::Flow;
    }
    parse_l4(p, flow, payload)
}

#[inline(always)]
fn parse_l4<P: Packet>(p: &P, flow: &mut Flow, l4_len: usize) -> Kind {
    match flow.proto {
        IPPROTO_TCP => {
            let Some(t) = load::<[u8; 20], P>(p, flow.l4_off) else {
                return Kind::Malformed;
            };
            let doff = usize::from(t[12] >> 4) * 4;
            if doff < 20 || l4_len < doff {
                return Kind::Malformed;
            }
            flow.sport = u16::from_ne_bytes([t[0], t[1]]);
            flow.dport = u16::from_ne_bytes([t[2], t[3]]);
            flow.tcp_flags = t[13];
        }
        IPPROTO_UDP => {
            let Some(u) = load::<[u8; 8], P>(p, flow.l4_off) else {
                return Kind::Malformed;
            };
            let ulen = usize::from(u16::from_be_bytes([u[4], u[5]]));
            if ulen < 8 || ulen > l4_len {
                return Kind::Malformed;
            }
            flow.sport = u16::from_ne_bytes([u[0], u[1]]);
            flow.dport = u16::from_ne_bytes([u[2], u[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let Some(ic) = load::<[u8; 8], P>(p, flow.l4_off) else {
                return Kind::Malformed;
            };
            let echo = if flow.proto == IPPROTO_ICMP {
                ic[0] == 8 || ic[0] == 0
            } else {
                ic[0] == 128 || ic[0] == 129
            };
            if !echo {
                return Kind::Other;
            }
            flow.sport = u16::from_ne_bytes([ic[4], ic[5]]);
            flow.dport = 0;
        }
        _ => return Kind::Other,
    }
    Kind::Flow
}

/// Which end of a flow a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Rewrite the source address and port (reverse NAT of replies).
    Source,
    /// Rewrite the destination address and port (DNAT towards a backend).
    Destination,
}

/// Rewrites one end of a TCP or UDP flow's address and port in place, with incremental IPv4
/// header and L4 checksum updates (a zero IPv4 UDP checksum stays zero). `addr` is 16 bytes
/// (IPv4-mapped for IPv4) and `port` is in network order. Returns `None`, having written
/// nothing, if the flow is not TCP/UDP or a header is out of bounds.
#[inline(always)]
pub fn rewrite<P: Packet>(
    p: &P,
    flow: &Flow,
    side: Side,
    addr: &[u8; 16],
    port: u16,
) -> Option<()> {
    let csum_off = match flow.proto {
        IPPROTO_TCP => flow.l4_off + 16,
        IPPROTO_UDP => flow.l4_off + 6,
        _ => return None,
    };
    let (addr_off4, addr_off6, port_off) = match side {
        Side::Source => (12, 8, 0),
        Side::Destination => (16, 24, 2),
    };
    let old_port = load::<[u8; 2], P>(p, flow.l4_off + port_off)?;
    let new_port = port.to_ne_bytes();
    let l4_check = u16::from_be_bytes(load::<[u8; 2], P>(p, csum_off)?);
    let udp_zero = flow.proto == IPPROTO_UDP && l4_check == 0 && flow.family == FAMILY_V4;
    let mut l4 = l4_check;
    if flow.family == FAMILY_V4 {
        let old4 = load::<[u8; 4], P>(p, flow.l3_off + addr_off4)?;
        let new4 = [addr[12], addr[13], addr[14], addr[15]];
        let ip_check = u16::from_be_bytes(load::<[u8; 2], P>(p, flow.l3_off + 10)?);
        let ip_check = crate::csum::replace(ip_check, &old4, &new4);
        l4 = crate::csum::replace(l4, &old4, &new4);
        store(p, flow.l3_off + addr_off4, new4)?;
        store(p, flow.l3_off + 10, ip_check.to_be_bytes())?;
    } else {
        let old6 = load::<[u8; 16], P>(p, flow.l3_off + addr_off6)?;
        l4 = crate::csum::replace(l4, &old6, addr);
        store(p, flow.l3_off + addr_off6, *addr)?;
    }
    l4 = crate::csum::replace(l4, &old_port, &new_port);
    store(p, flow.l4_off + port_off, new_port)?;
    if !udp_zero {
        if flow.proto == IPPROTO_UDP && l4 == 0 {
            l4 = 0xffff; // RFC 768: a computed zero is sent as all ones
        }
        store(p, csum_off, l4.to_be_bytes())?;
    }
    Some(())
}

/// A [`Packet`] over a mutable byte slice, for host-side tests and tools.
pub struct SlicePacket<'a> {
    ptr: *mut u8,
    len: usize,
    _buf: core::marker::PhantomData<&'a mut [u8]>,
}

impl<'a> SlicePacket<'a> {
    /// Wraps a buffer; writes through the packet change it.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: core::marker::PhantomData,
        }
    }
}

impl Packet for SlicePacket<'_> {
    fn ptr(&self, off: usize, size: usize) -> Option<*mut u8> {
        if off.checked_add(size)? > self.len {
            return None;
        }
        // SAFETY: off + size <= len, so the pointer stays within the wrapped buffer.
        Some(unsafe { self.ptr.add(off) })
    }
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests;
