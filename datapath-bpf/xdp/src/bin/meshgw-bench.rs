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
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use meshgw_common::bench::{
    sink_classify, sink_matches, udp4_check, GenConfig, SinkNode, SinkVerdict, GEN_CHECK_OFF,
    GEN_FRAME_LEN, GEN_SPORT_OFF, SINK_DELIVERED, SINK_HDR_LEN, SINK_MAX_NODES, SINK_PASSED,
    SINK_SLOTS, SINK_WRONG,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
