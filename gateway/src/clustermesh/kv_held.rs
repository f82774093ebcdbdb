//! The entries a cluster state holds, with the key each came from and whether the last list
//! missed it; the map operations every kind of entry shares.

use std::collections::{BTreeMap, BTreeSet};

use super::Applied;

#[derive(Clone, Debug)]
pub(super) struct Held<T> {
    /// The key it came from: deletes and lists match on it.
    pub(super) key: Box<str>,
    /// Boxed: a map node has 11 slots, many of them empty after sorted inserts, and an empty
    /// slot for a pointer costs less than one for a whole value.
    pub(super) value: Box<T>,
    /// Missing from the last list of its prefix, before that prefix's canary was seen.
    pub(super) stale: bool,
}

pub(super) type Map<K, T> = BTreeMap<K, Held<T>>;

pub(super) fn upsert<K: Ord, T: PartialEq>(
    map: &mut Map<K, T>,
    id: K,
    key: &str,
    value: T,
) -> Applied {
    match map.get_mut(&id) {
        // Clearing `stale` is not a visible change: the entry was served all along.
        Some(h) if *h.key == *key && *h.value == value => {
            h.stale = false;
            Applied::Unchanged
        }
        Some(h) => {
            *h = Held {
                key: key.into(),
                value: Box::new(value),
                stale: false,
            };
            Applied::Changed
        }
        None => {
            map.insert(
                id,
                Held {
                    key: key.into(),
                    value: Box::new(value),
                    stale: false,
                },
            );
            Applied::Changed
        }
    }
}

pub(super) fn remove<K: Ord, T>(map: &mut Map<K, T>, id: &K, key: &str) -> Applied {
    // The same entity under the other layout (state vs cache) is a different key: leave it.
    if map.get(id).is_some_and(|h| *h.key == *key) {
        map.remove(id);
        Applied::Changed
    } else {
        Applied::Unchanged
    }
}

/// Marks or deletes the entries under `prefix` that a list did not return; true if any went.
pub(super) fn sweep<K: Ord, T>(
    map: &mut Map<K, T>,
    prefix: &str,
    present: &BTreeSet<&str>,
    may_delete: impl Fn(&str) -> bool,
) -> bool {
    let before = map.len();
    map.retain(|_, h| {
        if !h.key.starts_with(prefix) {
            return true;
        }
        if present.contains(&*h.key) {
            // Listed, even if with a value we skipped: the key exists, keep its last good value.
            h.stale = false;
            return true;
        }
        if may_delete(&h.key) {
            return false;
        }
        h.stale = true;
        true
    });
    map.len() != before
}

/// Deletes the stale entries under `root` (all of them when `root` is `None`); true if any went.
pub(super) fn purge<K: Ord, T>(map: &mut Map<K, T>, root: Option<&str>) -> bool {
    let before = map.len();
    map.retain(|_, h| !(h.stale && root.is_none_or(|r| under_root(&h.key, r))));
    map.len() != before
}

pub(super) fn under_root(key: &str, root: &str) -> bool {
    key.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

pub(super) fn count_stale<K, T>(map: &Map<K, T>) -> usize {
    map.values().filter(|h| h.stale).count()
}
