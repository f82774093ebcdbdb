//! Internet checksum arithmetic (RFC 1071), with incremental updates (RFC 1624, eqn. 3) so a
//! rewrite of an address or port never re-reads the payload. Const-generic sizes keep every loop
//! fully unrolled for the BPF verifier.

/// Adds the big-endian 16-bit words of `data` to a 32-bit one's-complement accumulator.
#[inline(always)]
pub fn add_words<const N: usize>(mut acc: u32, data: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += 2;
    }
    if N % 2 == 1 {
        acc += u32::from(data[N - 1]) << 8;
    }
    acc
}

/// Folds a 32-bit accumulator into 16 bits (end-around carry).
#[inline(always)]
pub fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum of a complete IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(hdr: &[u8; 20]) -> u16 {
    !fold(add_words(0, hdr))
}

/// Updates a checksum field (`check`, as read from the wire, big-endian value) for a change of
/// `old` to `new` somewhere in the covered data: `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub fn replace<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut acc = u32::from(!check);
    let mut i = 0;
    while i + 1 < N {
        acc += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        acc += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(data: &[u8]) -> u16 {
        let mut acc = 0u32;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            acc += u32::from(w);
        }
        !fold(acc)
    }

    #[test]
    fn ipv4_header_matches_rfc1071_example() {
        // The classic worked example (RFC 1071 style): checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        let c = ipv4_header(&h).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
        assert_eq!(
            full(&h),
            0,
            "a header with its checksum in place sums to zero"
        );
    }

    #[test]
    fn incremental_equals_recompute() {
        // Pseudo data: checksum over 12 bytes, then change 4 of them (an address) and 2 (a port).
        let mut data = [
            0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x0f, 0xed, 0xcb, 0xa9,
        ];
        let c0 = full(&data);
        let old_addr = [data[0], data[1], data[2], data[3]];
        let new_addr = [10, 244, 1, 10];
        data[..4].copy_from_slice(&new_addr);
        let c1 = replace(c0, &old_addr, &new_addr);
        assert_eq!(c1, full(&data));
        let old_port = [data[8], data[9]];
        let new_port = 8080u16.to_be_bytes();
        data[8..10].copy_from_slice(&new_port);
        assert_eq!(replace(c1, &old_port, &new_port), full(&data));
    }

    #[test]
    fn incremental_handles_all_ones_and_zero_words() {
        for (a, b) in [
            ([0xffu8, 0xff], [0u8, 0]),
            ([0, 0], [0xff, 0xff]),
            ([0x80, 0], [0x7f, 0xff]),
        ] {
            let mut data = [a[0], a[1], 0x11, 0x22];
            let c0 = full(&data);
            data[0] = b[0];
            data[1] = b[1];
            let c1 = replace(c0, &a, &b);
            // 0x0000 and 0xffff are the same value in one's complement: compare as sums.
            assert_eq!(
                fold(u32::from(!c1)) % 0xffff,
                fold(u32::from(!full(&data))) % 0xffff
            );
        }
    }
}
