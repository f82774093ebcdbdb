//! serde helpers for the forms Go's encoding/json gives Cilium's values: nil maps and slices as
//! null, unset IPs as `""`, `net.IPMask` as base64, pod CIDRs as an object or (newer) a string,
//! and maps of pointers whose entries may be null.

use std::net::IpAddr;

use base64::Engine as _;
use ipnet::IpNet;
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

use super::kv_values::NodeAddress;

/// The prefix length of a Go `net.IPMask` for `ip`'s family.
pub(super) fn prefix_len(ip: IpAddr, mask: &[u8]) -> Result<u8, String> {
    // Go may hold an IPv4 mask in 16 bytes, the first 12 all ones (the v4-in-v6 form).
    let mask = match (ip, mask.len()) {
        (IpAddr::V4(_), 4) | (IpAddr::V6(_), 16) => mask,
        (IpAddr::V4(_), 16) if mask[..12].iter().all(|b| *b == 0xff) => &mask[12..],
        _ => return Err(format!("a {}-byte mask does not fit {ip}", mask.len())),
    };
    let bits = mask
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    let ones = bits.count_ones();
    let width = 8 * mask.len() as u32;
    let contiguous = match ones {
        0 => 0,
        n => (!0u128 << (width - n)) & (!0u128 >> (128 - width)),
    };
    if bits != contiguous {
        return Err(format!("mask {mask:02x?} is not contiguous"));
    }
    u8::try_from(ones).map_err(|e| e.to_string())
}

pub(super) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    // Go writes a nil map or slice as null.
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An IP that Go writes as `""` (or null) when unset.
pub(super) fn opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("invalid IP address {s:?}"))),
    }
}

fn decode_b64(s: &str) -> Result<Vec<u8>, String> {
    let std = base64::engine::general_purpose::STANDARD;
    let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD;
    std.decode(s)
        .or_else(|_| unpadded.decode(s))
        .map_err(|e| format!("mask {s:?} is not base64: {e}"))
}

/// A Go `net.IPMask`: base64 of the mask bytes, or null.
pub(super) fn opt_mask<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => decode_b64(s).map(Some).map_err(D::Error::custom),
    }
}

/// A pod CIDR in either of the forms Cilium writes.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawCidr {
    /// `"10.244.1.0/24"` (newer writers).
    Text(String),
    /// `{"IP": "10.244.1.0", "Mask": "////AA=="}` (Go's `net.IPNet`).
    Net {
        #[serde(rename = "IP")]
        ip: String,
        #[serde(rename = "Mask")]
        mask: String,
    },
}

impl RawCidr {
    fn parse(self) -> Result<Option<IpNet>, String> {
        match self {
            RawCidr::Text(s) if s.is_empty() => Ok(None),
            RawCidr::Text(s) => s
                .parse::<IpNet>()
                .map(|n| Some(n.trunc()))
                .map_err(|_| format!("invalid CIDR {s:?}")),
            RawCidr::Net { ip, mask } => {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| format!("invalid CIDR address {ip:?}"))?;
                let len = prefix_len(ip, &decode_b64(&mask)?)?;
                IpNet::new(ip, len)
                    .map(|n| Some(n.trunc()))
                    .map_err(|e| e.to_string())
            }
        }
    }
}

pub(super) fn cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
    match Option::<RawCidr>::deserialize(d)? {
        None => Ok(None),
        Some(raw) => raw.parse().map_err(D::Error::custom),
    }
}

pub(super) fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Option::<Vec<Option<RawCidr>>>::deserialize(d)?.unwrap_or_default();
    let mut out = Vec::new();
    for r in raw.into_iter().flatten() {
        out.extend(r.parse().map_err(D::Error::custom)?);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(rename = "Type")]
    addr_type: String,
    #[serde(default, rename = "IP", deserialize_with = "opt_ip")]
    ip: Option<IpAddr>,
}

pub(super) fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeAddress>, D::Error> {
    let raw = Option::<Vec<RawAddress>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .filter_map(|a| {
            Some(NodeAddress {
                addr_type: a.addr_type,
                ip: a.ip?,
            })
        })
        .collect())
}
