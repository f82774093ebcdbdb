//! Compact forms of the small maps a `services/v1` value carries, held once per service and so
//! per tens of thousands of services: sorted boxed slices instead of `BTreeMap`s (a one-entry
//! `BTreeMap` allocates a whole 11-slot node) and `Box<str>` instead of `String`. They decode
//! exactly as the `BTreeMap`s did: the same accepted values and errors, a repeated key's last
//! value wins, and Go's nulls (a nil map, a nil pointer) mean "none".

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::PortConfig;

/// Sorts by key and keeps the last value of a repeated key, as inserting into a map does.
fn sorted_last_wins<K: Ord, V>(mut entries: Vec<(K, V)>) -> Vec<(K, V)> {
    // Stable: a repeated key's entries stay in arrival order, so the last one is the last read.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(K, V)> = Vec::with_capacity(entries.len());
    for e in entries {
        match out.last_mut() {
            Some(last) if last.0 == e.0 => *last = e,
            _ => out.push(e),
        }
    }
    out
}

/// The entries of a JSON object, in the order written (a repeated key repeats).
struct Entries<K, V>(Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Entries<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for V_<K, V> {
            type Value = Entries<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                // serde's own map visitor says this: the errors stay as they were.
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V_(PhantomData))
    }
}

/// One IP's ports as decoded: a `None` port is Go's nil pointer.
type RawPorts = Entries<String, Option<PortConfig>>;

/// The named ports of one IP, sorted by name.
#[derive(Clone, Copy, Debug)]
pub struct Ports<'a> {
    /// Each port with the end of its name in `names`.
    ports: &'a [(u32, PortConfig)],
    names: &'a str,
    /// Where the first port's name starts in `names`.
    start: u32,
}

impl<'a> Ports<'a> {
    fn name(&self, j: usize) -> &'a str {
        let start = match j {
            0 => self.start,
            _ => self.ports[j - 1].0,
        };
        // Whole names were concatenated, so both ends are char boundaries.
        self.names
            .get(start as usize..self.ports[j].0 as usize)
            .unwrap_or_default()
    }

    /// The port named `name`.
    pub fn get(&self, name: &str) -> Option<&'a PortConfig> {
        let (mut lo, mut hi) = (0, self.ports.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(&self.ports[mid].1),
            }
        }
        None
    }

    /// Name and port, by name.
    pub fn iter(self) -> impl Iterator<Item = (&'a str, &'a PortConfig)> {
        (0..self.ports.len()).map(move |j| (self.name(j), &self.ports[j].1))
    }

    /// The names, sorted.
    pub fn keys(self) -> impl Iterator<Item = &'a str> {
        (0..self.ports.len()).map(move |j| self.name(j))
    }

    /// How many ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

impl PartialEq for Ports<'_> {
    fn eq(&self, other: &Self) -> bool {
        // The same ports, wherever their names are stored.
        self.iter().eq(other.iter())
    }
}

impl Eq for Ports<'_> {}

/// IP -> port name -> port (a frontend's or a backend's), sorted by IP then name. An IP whose
/// port map was null or empty is kept, with no ports. Three allocations however many IPs and
/// ports: the IPs, the ports, and their names end to end (one canonical form per map, so the
/// derived equality is the maps' equality).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortsByIp {
    /// Each IP with the end of its ports in `ports`.
    ips: Box<[(IpAddr, u32)]>,
    /// Each port with the end of its name in `names`.
    ports: Box<[(u32, PortConfig)]>,
    names: Box<str>,
}

impl PortsByIp {
    fn ports_of(&self, i: usize) -> Ports<'_> {
        let first = match i {
            0 => 0,
            _ => self.ips[i - 1].1 as usize,
        };
        let ports = &self.ports[first..self.ips[i].1 as usize];
        let start = match first {
            0 => 0,
            _ => self.ports[first - 1].0,
        };
        Ports {
            ports,
            names: &self.names,
            start,
        }
    }

    /// The ports of `ip`, if it is listed.
    pub fn get(&self, ip: &IpAddr) -> Option<Ports<'_>> {
        let i = self.ips.binary_search_by(|(a, _)| a.cmp(ip)).ok()?;
        Some(self.ports_of(i))
    }

    /// IP and ports, by IP.
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, Ports<'_>)> + '_ {
        self.ips
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| (ip, self.ports_of(i)))
    }

    /// The IPs, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &IpAddr> + '_ {
        self.ips.iter().map(|(ip, _)| ip)
    }

    /// The ports of each IP, by IP.
    pub fn values(&self) -> impl Iterator<Item = Ports<'_>> + '_ {
        (0..self.ips.len()).map(|i| self.ports_of(i))
    }

    /// How many IPs.
    pub fn len(&self) -> usize {
        self.ips.len()
    }

    /// Whether there is no IP.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// From IPs and their ports, each as decoded (unsorted, keys possibly repeated, a `None`
    /// for Go's nil pointer).
    fn from_decoded(ips: Vec<(IpAddr, Option<RawPorts>)>) -> Result<Self, String> {
        let too_many = |_| "too many ports or port names".to_string();
        let ips = sorted_last_wins(ips);
        let mut index = Vec::with_capacity(ips.len());
        let mut ports = Vec::new();
        let mut names = String::new();
        for (ip, named) in ips {
            let named = named.map(|e| sorted_last_wins(e.0)).unwrap_or_default();
            // A nil port is no port; dropped after the last-wins step, as the map dropped it.
            for (name, port) in named {
                let Some(port) = port else { continue };
                names.push_str(&name);
                ports.push((u32::try_from(names.len()).map_err(too_many)?, port));
            }
            index.push((ip, u32::try_from(ports.len()).map_err(too_many)?));
        }
        Ok(PortsByIp {
            ips: index.into_boxed_slice(),
            ports: ports.into_boxed_slice(),
            names: names.into_boxed_str(),
        })
    }
}

impl<'de> Deserialize<'de> for PortsByIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Cilium's port maps hold pointers: a null map or port is possible in Go and means "none".
        type Raw = Option<Entries<IpAddr, Option<RawPorts>>>;
        let raw = Raw::deserialize(d)?.map(|e| e.0).unwrap_or_default();
        PortsByIp::from_decoded(raw).map_err(serde::de::Error::custom)
    }
}

/// Label key -> value, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    /// Key and value, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Go writes a nil map as null.
        let raw = Option::<Entries<String, String>>::deserialize(d)?;
        let sorted = sorted_last_wins(raw.map(|e| e.0).unwrap_or_default());
        Ok(Labels(
            sorted
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        ))
    }
}

/// A string, checked and dropped.
struct AnyStr;

impl<'de> Deserialize<'de> for AnyStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_;
        impl Visitor<'_> for V_ {
            type Value = AnyStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<AnyStr, E> {
                Ok(AnyStr)
            }
        }
        d.deserialize_str(V_)
    }
}

/// A map of strings, checked and dropped.
struct StringMapShape;

impl<'de> Deserialize<'de> for StringMapShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_;
        impl<'de> Visitor<'de> for V_ {
            type Value = StringMapShape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<AnyStr, AnyStr>()?.is_some() {}
                Ok(StringMapShape)
            }
        }
        d.deserialize_map(V_)
    }
}

/// Checks that a field nothing reads is a map of strings (or null), as Cilium writes it, without
/// holding it: a value of another shape is rejected as it was when the field was kept.
pub(super) fn string_map_shape<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    Option::<StringMapShape>::deserialize(d).map(|_| ())
}

#[cfg(test)]
#[path = "kv_compact_tests.rs"]
mod tests;
