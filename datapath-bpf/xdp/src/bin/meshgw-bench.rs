//! The packets-per-second benchmark's programs (`scripts/bench_pps.sh`), an object of their own so
//! that nothing here can change the datapath under test. Layouts and packet arithmetic are in
//! `meshgw_common::bench`.
//! - `meshgw_bench_gen`: the generator. `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`
//!   runs it on the legacy host's interface; it gives every packet the next of N source ports
//!   (so Maglev spreads the flows) and returns `XDP_TX`, which the kernel turns into a transmit
//!   out of that interface, towards the gateway.
//! - `meshgw_bench_sink`: the sink, attached where the gateway's VXLAN arrives. It counts, per CPU,
//!   the packets that are VXLAN to a known node with the right VNI and the right inner packet,
//!   and drops them; VXLAN that fails a check is counted apart (a wrong path must not count).
//! - `meshgw_bench_replay`: for the per-packet benchmark (`examples/xdp_bench.rs`), run with the
//!   kernel's `repeat`: restores the frame the previous repetition rewrote, then tail-calls the
//!   datapath program under test (see `meshgw_common::bench::ReplayFrame`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
    EbpfContext,
};
use meshgw_common::bench::{
    sink_classify, sink_matches, udp4_check, GenConfig, ReplayFrame, SinkNode, SinkVerdict,
    GEN_CHECK_OFF, GEN_FRAME_LEN, GEN_SPORT_OFF, REPLAY_MAX_LEN, SINK_DELIVERED, SINK_HDR_LEN,
    SINK_MAX_NODES, SINK_PASSED, SINK_SLOTS, SINK_WRONG,
};

// Named as in `meshgw_common::bench::names` (the attribute takes only a literal).
#[map(name = "MGWB_GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map(name = "MGWB_GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "MGWB_SINK_NODES")]
static SINK_NODES: HashMap<[u8; 4], SinkNode> = HashMap::with_max_entries(SINK_MAX_NODES, 0);

#[map(name = "MGWB_SINK_COUNTS")]
static SINK_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SINK_SLOTS, 0);

#[map(name = "MGWB_REPLAY_FRAME")]
static REPLAY_FRAME: Array<ReplayFrame> = Array::with_max_entries(1, 0);

#[map(name = "MGWB_REPLAY_PROGS")]
static REPLAY_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The UDP port the sink treats as VXLAN (Cilium's).
const VXLAN_PORT: u16 = 8472;

#[inline(always)]
fn bounds(ctx: &XdpContext) -> (usize, usize) {
    let md = ctx.ctx;
    // SAFETY: `md` is the program's context pointer, valid for the whole invocation. Volatile
    // loads keep LLVM from narrowing the packet pointers (see the datapath's ctx.rs).
    unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*md).data)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*md).data_end)) as usize,
        )
    }
}

/// Generator: next source port, its checksum, transmit.
#[xdp]
pub fn meshgw_bench_gen(ctx: XdpContext) -> u32 {
    let (start, end) = bounds(&ctx);
    if start + GEN_FRAME_LEN > end {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(cfg), Some(seq)) = (GEN_CONFIG.get(0), GEN_SEQ.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: this CPU's sequence number; XDP runs to completion on one CPU.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let flows = if cfg.flows == 0 { 1 } else { cfg.flows };
    let sport = cfg.sport_base.wrapping_add((n % flows) as u16);
    let check = udp4_check(cfg.partial, sport);
    // SAFETY: the whole frame was checked against data_end above. Live frames come back with
    // what the path downstream wrote into them, so the whole frame is written every time.
    unsafe {
        core::ptr::write_unaligned(start as *mut [u8; GEN_FRAME_LEN], cfg.frame);
        core::ptr::write_unaligned((start + GEN_SPORT_OFF) as *mut [u8; 2], sport.to_be_bytes());
        core::ptr::write_unaligned((start + GEN_CHECK_OFF) as *mut [u8; 2], check.to_be_bytes());
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = SINK_COUNTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's counter; XDP runs to completion on one CPU.
        unsafe { *c += 1 };
    }
}

/// Sink: count and drop what the nodes would accept; everything else that is not VXLAN passes.
#[xdp]
pub fn meshgw_bench_sink(ctx: XdpContext) -> u32 {
    let (start, end) = bounds(&ctx);
    if start + SINK_HDR_LEN > end {
        count(SINK_PASSED);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: SINK_HDR_LEN bytes were checked against data_end above.
    let h = unsafe { &*(start as *const [u8; SINK_HDR_LEN]) };
    match sink_classify(h, VXLAN_PORT) {
        SinkVerdict::Other => {
            count(SINK_PASSED);
            xdp_action::XDP_PASS
        }
        SinkVerdict::Vxlan(dst) => {
            // SAFETY: the value is only read, within this invocation.
            let ok = unsafe { SINK_NODES.get(&dst) }.is_some_and(|node| sink_matches(h, node));
            count(if ok { SINK_DELIVERED } else { SINK_WRONG });
            xdp_action::XDP_DROP
        }
    }
}

/// Replay: moves the head back to the frame's length (the program under test may have grown or
/// shrunk it; it never moves the end), writes the frame again in eight-byte words (the last one
/// overlapping when the length is not a multiple of eight), and tail-calls the program under
/// test. The floor row tail-calls an empty program, so the replay's own cost cancels out; for
/// that the head is moved by a helper call on every repetition, even by 0 (the floor's case):
/// skipping the call there would charge a path that grew the head with the harness's call.
#[xdp]
pub fn meshgw_bench_replay(ctx: XdpContext) -> u32 {
    let Some(r) = REPLAY_FRAME.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // Masked, so the verifier knows its bound on every path LLVM may take.
    let len = (r.len as usize) & (2 * REPLAY_MAX_LEN - 1);
    if !(8..=REPLAY_MAX_LEN).contains(&len) {
        return xdp_action::XDP_ABORTED;
    }
    let (start, end) = bounds(&ctx);
    // Opaque, or LLVM computes `end - (start + len)`: arithmetic on a packet pointer that the
    // verifier refuses.
    let cur = core::hint::black_box(end - start);
    let delta = cur as i32 - len as i32;
    // SAFETY: the helper only moves `data`; the bounds are read again below.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, delta) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let (start, end) = bounds(&ctx);
    let mut i = 0;
    while i < REPLAY_MAX_LEN / 8 {
        let off = i * 8;
        if off + 8 > len {
            break;
        }
        if start + off + 8 > end {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: eight bytes at `off` lie inside the packet (checked just above) and inside the
        // map value's frame (off + 8 <= len <= REPLAY_MAX_LEN).
        unsafe {
            core::ptr::write_unaligned(
                (start + off) as *mut u64,
                core::ptr::read_unaligned(r.frame.as_ptr().add(off) as *const u64),
            );
        }
        i += 1;
    }
    if len % 8 != 0 {
        let off = (len - 8) & (REPLAY_MAX_LEN - 1);
        if start + off + 8 > end || off + 8 > REPLAY_MAX_LEN {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: as above, for the last eight bytes of the frame.
        unsafe {
            core::ptr::write_unaligned(
                (start + off) as *mut u64,
                core::ptr::read_unaligned(r.frame.as_ptr().add(off) as *const u64),
            );
        }
    }
    // SAFETY: `ctx` is this program's context; on success the call does not return.
    unsafe { REPLAY_PROGS.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
