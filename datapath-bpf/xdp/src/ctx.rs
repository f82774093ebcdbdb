//! [`Packet`] over an XDP context: every access is checked against `data_end`, which is exactly
//! the proof the verifier asks for.

use aya_ebpf::programs::XdpContext;
use meshgw_common::parse::{parse_into, rewrite, Flow, Kind, Packet, Side};

/// Offsets beyond this are refused outright. Header offsets reach the verifier through memory
/// (the per-CPU scratch map), where it no longer knows their bounds; this check restores them.
const MAX_OFFSET: usize = 1024;

/// The packet of an XDP context. Re-create it after `bpf_xdp_adjust_head`, which invalidates
/// every packet pointer.
pub struct XdpPacket<'a> {
    pub ctx: &'a XdpContext,
}

impl XdpPacket<'_> {
    /// `data` and `data_end`, read with volatile loads inside whichever function needs them:
    /// otherwise LLVM may hoist the 32-bit context loads into a caller and pass them to a
    /// subprogram as 32-bit arguments, whose zero-extension the verifier refuses on packet
    /// pointers ("pointer arithmetic with <<= operator prohibited").
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        let md = self.ctx.ctx;
        // SAFETY: `md` is the program's context pointer, valid for the whole invocation.
        unsafe {
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*md).data)) as usize,
                core::ptr::read_volatile(core::ptr::addr_of!((*md).data_end)) as usize,
            )
        }
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn ptr(&self, off: usize, size: usize) -> Option<*mut u8> {
        if off > MAX_OFFSET {
            return None;
        }
        let (start, end) = self.bounds();
        if start + off + size > end {
            return None;
        }
        Some((start + off) as *mut u8)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        let (start, end) = self.bounds();
        end - start
    }
}

/// Parses the frame starting at `base` into `out`. A subprogram of its own, so the parse chain's
/// temporaries get a frame of their own instead of growing the caller's.
#[inline(never)]
pub fn parse_frame(ctx: &XdpContext, base: usize, out: &mut Flow) -> Kind {
    parse_into(&XdpPacket { ctx }, base, out)
}

/// [`rewrite`] as a subprogram (see [`parse_frame`]). Returns whether the packet was rewritten.
#[inline(never)]
pub fn rewrite_frame(
    ctx: &XdpContext,
    flow: &Flow,
    side: Side,
    addr: &[u8; 16],
    port: u16,
) -> bool {
    rewrite(&XdpPacket { ctx }, flow, side, addr, port).is_some()
}

/// Writes `v` at `p + off` as one store of its width. `p + off` need not be aligned: the BPF
/// verifier accepts unaligned packet access (without `BPF_F_STRICT_ALIGNMENT`, on every
/// architecture the gateway runs on), and one wide store is a single instruction where the
/// compiler would otherwise split an unaligned write into bytes.
///
/// # Safety
/// `p + off .. p + off + size_of::<T>()` must be writable packet bytes (checked by the caller
/// through [`Packet::ptr`]).
#[inline(always)]
pub unsafe fn put<T: Copy>(p: *mut u8, off: usize, v: T) {
    #[allow(clippy::cast_ptr_alignment)]
    (p.add(off) as *mut T).write_volatile(v);
}
