//! The policy stage: the first packet of a flow is admitted only if an allow entry covers
//! (source identity, backend identity, backend port, protocol). Later packets find the flow in
//! connection tracking and pay nothing here: the verdict is the entry's existence.

use aya_ebpf::maps::lpm_trie::Key;
use meshgw_common::maps::{PolicyKey, ID_ANY, ID_WORLD, POLICY_ALLOW, PROTO_ANY};

use crate::maps::{IDENTITIES, POLICY};

/// The identity of a legacy source: its longest configured prefix, else `world`.
#[inline(always)]
pub fn source_identity(addr: &[u8; 16]) -> u32 {
    let key = Key::new(128, *addr);
    IDENTITIES.get(&key).copied().unwrap_or(ID_WORLD)
}

#[inline(always)]
fn allows(src: u32, dst: u32, dport: u16, proto: u8) -> bool {
    let key = PolicyKey {
        src,
        dst,
        dport,
        proto,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    unsafe { POLICY.get(&key) }.is_some_and(|v| v.verdict == POLICY_ALLOW)
}

/// Whether `src` may open a flow to `dst` on `dport`/`proto`: an L4 rule for this source, an L3
/// rule for it (any port), then the same for any source.
#[inline(never)]
pub fn admits(src: u32, dst: u32, dport: u16, proto: u8) -> bool {
    allows(src, dst, dport, proto)
        || allows(src, dst, 0, PROTO_ANY)
        || allows(ID_ANY, dst, dport, proto)
        || allows(ID_ANY, dst, 0, PROTO_ANY)
}
