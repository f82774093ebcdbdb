//! FIB lookups through `bpf_fib_lookup`: the kernel's routes and neighbour table give the L2
//! addresses and the MTU check, so the datapath never keeps its own copy of them.

use aya_ebpf::{helpers::generated::bpf_fib_lookup, programs::XdpContext, EbpfContext};

/// `struct bpf_fib_lookup` with the unions flattened to the members we use (64 bytes).
#[repr(C)]
#[derive(Default)]
pub struct FibParams {
    pub family: u8,
    pub l4_protocol: u8,
    pub sport: u16,
    pub dport: u16,
    /// In: total length for the MTU check; out: the MTU when the check fails.
    pub tot_len: u16,
    pub ifindex: u32,
    pub flowinfo: u32,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub vlan_proto: u16,
    pub vlan_tci: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Look up from an egress perspective: `ifindex` is the output interface.
const BPF_FIB_LOOKUP_OUTPUT: u32 = 2;
const FIB_SUCCESS: i64 = 0;
const FIB_FRAG_NEEDED: i64 = 8;

/// The outcome of a lookup; on `Found`, `smac`, `dmac` and `ifindex` of the params are set.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fib {
    Found,
    TooBig,
    Miss,
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Fills `p` for a lookup from `src` to `dst` (16-byte addresses, IPv4-mapped for IPv4) leaving
/// through `oif`, for a packet of `tot_len` bytes (IP length, for the MTU check).
#[inline(always)]
pub fn prepare(
    p: &mut FibParams,
    v4: bool,
    src: &[u8; 16],
    dst: &[u8; 16],
    oif: u32,
    tot_len: u16,
) {
    // Field by field: a struct update from `default()` compiles to a byte-loop memset. The
    // MACs are outputs only and are left as they are.
    p.l4_protocol = 0;
    p.sport = 0;
    p.dport = 0;
    p.tot_len = tot_len;
    p.ifindex = oif;
    p.flowinfo = 0;
    p.vlan_proto = 0;
    p.vlan_tci = 0;
    if v4 {
        p.family = AF_INET;
        p.src = [
            u32::from_ne_bytes([src[12], src[13], src[14], src[15]]),
            0,
            0,
            0,
        ];
        p.dst = [
            u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]),
            0,
            0,
            0,
        ];
    } else {
        p.family = AF_INET6;
        p.src = words(src);
        p.dst = words(dst);
    }
}

/// Runs the lookup prepared in `p`.
#[inline(always)]
pub fn lookup(ctx: &XdpContext, p: &mut FibParams) -> Fib {
    // SAFETY: FibParams has the kernel's layout and size; the helper writes only within it.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            p as *mut FibParams as *mut _,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    match rc {
        FIB_SUCCESS => Fib::Found,
        FIB_FRAG_NEEDED => Fib::TooBig,
        _ => Fib::Miss,
    }
}
