//! Flow hashing: picks the Maglev slot of a new flow and the VXLAN source port (entropy for the
//! underlay's ECMP, as RFC 7348 recommends). The same flow always hashes the same.

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
fn mix(h: u32, w: u32) -> u32 {
    (h ^ w)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// A 16-byte address as the four native-order words [`flow_hash_words`] hashes.
#[inline(always)]
pub fn words(b: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// A 32-bit hash of a 5-tuple (addresses as 16 bytes, ports as stored).
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16, proto: u8) -> u32 {
    flow_hash_words(&words(src), &words(dst), sport, dport, proto)
}

/// [`flow_hash`] of addresses already read as [`words`]: in BPF, a word assembled from a byte
/// array costs four loads and six shifts and ors, where an aligned address is read as one load
/// per word (see `Flow::hash`).
#[inline(always)]
pub fn flow_hash_words(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = 0x9747_b28c_u32 ^ u32::from(proto);
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, (u32::from(sport) << 16) | u32::from(dport));
    fmix32(h)
}

/// Maps a flow hash onto the ephemeral range 32768..61000 (Linux's default), as the kernel's
/// own VXLAN driver does for its source ports.
#[inline(always)]
pub fn vxlan_source_port(hash: u32) -> u16 {
    const LO: u32 = 32_768;
    const SPAN: u32 = 61_000 - 32_768;
    (LO + ((u64::from(hash) * u64::from(SPAN)) >> 32) as u32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field_and_is_stable() {
        let a = [1u8; 16];
        let b = [2u8; 16];
        let h = flow_hash(&a, &b, 1000, 80, 6);
        assert_eq!(h, flow_hash(&a, &b, 1000, 80, 6));
        assert_ne!(h, flow_hash(&b, &a, 1000, 80, 6));
        assert_ne!(h, flow_hash(&a, &b, 1001, 80, 6));
        assert_ne!(h, flow_hash(&a, &b, 1000, 81, 6));
        assert_ne!(h, flow_hash(&a, &b, 1000, 80, 17));
    }

    #[test]
    fn hash_spreads_sequential_ports_evenly() {
        let a = [10u8; 16];
        let b = [20u8; 16];
        let mut buckets = [0u32; 2];
        for p in 0..10_000u16 {
            buckets[(flow_hash(&a, &b, 20_000 + p, 80, 6) % 2) as usize] += 1;
        }
        assert!(buckets[0] > 4_700 && buckets[1] > 4_700, "{buckets:?}");
    }

    #[test]
    fn source_port_stays_in_range() {
        for h in [0u32, 1, u32::MAX, 0x8000_0000, 12_345_678] {
            let p = vxlan_source_port(h);
            assert!((32_768..61_000).contains(&p), "{p}");
        }
    }
}
