//! The policy stage: the first packet of a flow is admitted only if an allow entry covers
//! (source identity, backend identity, backend port, protocol). Later packets find the flow in
//! connection tracking and pay nothing here: the verdict is the entry's existence.

use aya_ebpf::maps::lpm_trie::Key;
use meshgw_common::maps::{
    PolicyKey, ID_ANY, ID_WORLD, POLICY_ALLOW, POLICY_EGRESS, POLICY_INGRESS, PROTO_ANY,
};

use crate::maps::{IDENTITIES, POLICY};

/// The identity of an address: a mesh endpoint's own, a legacy host's longest configured
/// prefix's, else `world`.
#[inline(always)]
pub fn source_identity(addr: &[u8; 16]) -> u32 {
    let key = Key::new(128, *addr);
    IDENTITIES.get(&key).copied().unwrap_or(ID_WORLD)
}

#[inline(always)]
fn allows(dir: u8, src: u32, dst: u32, dport: u16, proto: u8) -> bool {
    let key = PolicyKey {
        src,
        dst,
        dport,
        proto,
        dir,
    };
    // SAFETY: copied out at once.
    unsafe { POLICY.get(&key) }.is_some_and(|v| v.verdict == POLICY_ALLOW)
}

/// Whether `src` may open a flow to `dst` on `dport`/`proto`: an L4 rule for this source, an L3
/// rule for it (any port), then the same for any source.
#[inline(never)]
pub fn admits(src: u32, dst: u32, dport: u16, proto: u8) -> bool {
    let d = POLICY_INGRESS;
    allows(d, src, dst, dport, proto)
        || allows(d, src, dst, 0, PROTO_ANY)
        || allows(d, ID_ANY, dst, dport, proto)
        || allows(d, ID_ANY, dst, 0, PROTO_ANY)
}

/// Whether endpoint identity `src` may open a flow to legacy identity `dst` on `dport`/`proto`:
/// the same four lookups with the wildcard on the peer, which here is the destination. Inlined:
/// its caller sits one call deeper than the ingress check's, and a frame of its own would take
/// the chain past the BPF stack limit.
#[inline(always)]
pub fn admits_egress(src: u32, dst: u32, dport: u16, proto: u8) -> bool {
    let d = POLICY_EGRESS;
    allows(d, src, dst, dport, proto)
        || allows(d, src, dst, 0, PROTO_ANY)
        || allows(d, src, ID_ANY, dport, proto)
        || allows(d, src, ID_ANY, 0, PROTO_ANY)
}
