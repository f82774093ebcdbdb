//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Cilium and Katran use it: each
//! backend walks its own permutation of the table's slots and they take turns claiming free ones.
//! The result spreads slots evenly (every backend gets ⌊M/N⌋ or ⌈M/N⌉ of them) and a change in
//! the backend set moves few slots that belonged to backends still present.
//!
//! Backends are named by a stable string (their address, port and node), and the table depends
//! only on the *set* of names: the same backends give the same table in every gateway, after
//! every restart, whatever order they were listed in.

use meshgw_common::maps::MAGLEV_SIZE;

/// 64-bit FNV-1a with a seed mixed in, finished with a murmur3-style avalanche.
fn hash64(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Builds a table of `MAGLEV_SIZE` slots over `backends` (name, weight). Returns, for each slot,
/// the index of the backend in `backends`. Weights (≥ 1) give a backend proportionally more
/// turns, as Cilium's weighted Maglev does. Returns `None` when there is no backend.
pub fn table(backends: &[(String, u32)]) -> Option<Vec<usize>> {
    if backends.is_empty() {
        return None;
    }
    let m = MAGLEV_SIZE as u64;
    // Sort by name so the outcome does not depend on input order; keep the caller's indices.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|a, b| backends[*a].0.cmp(&backends[*b].0));
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|i| {
            let name = backends[*i].0.as_bytes();
            (
                hash64(0x6d67_7731, name) % m,
                hash64(0x6d67_7732, name) % (m - 1) + 1,
            )
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut slots: Vec<Option<usize>> = vec![None; MAGLEV_SIZE];
    let mut filled = 0;
    let weights: Vec<u32> = order.iter().map(|i| backends[*i].1.max(1)).collect();
    let max_w = weights.iter().copied().max().unwrap_or(1);
    'outer: loop {
        // Weighted turns: in each round of `max_w` passes, a backend of weight w claims w slots.
        for pass in 0..max_w {
            for (k, (offset, skip)) in perms.iter().enumerate() {
                if weights[k] <= pass {
                    continue;
                }
                let mut c = (offset + next[k] * skip) % m;
                while slots[c as usize].is_some() {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                slots[c as usize] = Some(order[k]);
                next[k] += 1;
                filled += 1;
                if filled == MAGLEV_SIZE {
                    break 'outer;
                }
            }
        }
    }
    Some(slots.into_iter().map(|s| s.unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<(String, u32)> {
        (0..n)
            .map(|i| {
                (
                    format!("10.244.{}.{}:8080@node-{}", i / 200, i % 200, i % 7),
                    1,
                )
            })
            .collect()
    }

    fn counts(t: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for s in t {
            c[*s] += 1;
        }
        c
    }

    #[test]
    fn empty_has_no_table() {
        assert!(table(&[]).is_none());
    }

    #[test]
    fn slots_are_spread_evenly() {
        for n in [1, 2, 3, 7, 10, 50] {
            let t = table(&names(n)).unwrap();
            assert_eq!(t.len(), MAGLEV_SIZE);
            let c = counts(&t, n);
            let lo = MAGLEV_SIZE / n;
            for (i, k) in c.iter().enumerate() {
                assert!(*k == lo || *k == lo + 1, "n={n} backend {i} got {k} slots");
            }
        }
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let a = names(5);
        let mut b = a.clone();
        b.reverse();
        let ta: Vec<&str> = table(&a)
            .unwrap()
            .iter()
            .map(|i| a[*i].0.as_str())
            .collect();
        let tb: Vec<&str> = table(&b)
            .unwrap()
            .iter()
            .map(|i| b[*i].0.as_str())
            .collect();
        assert_eq!(ta, tb);
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        let all = names(10);
        let before: Vec<String> = table(&all)
            .unwrap()
            .iter()
            .map(|i| all[*i].0.clone())
            .collect();
        let removed = all[3].0.clone();
        let rest: Vec<(String, u32)> = all.iter().filter(|(n, _)| *n != removed).cloned().collect();
        let after: Vec<String> = table(&rest)
            .unwrap()
            .iter()
            .map(|i| rest[*i].0.clone())
            .collect();
        let kept = before.iter().filter(|b| **b != removed).count();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != removed && b != a)
            .count();
        // The removed backend's ~10% of slots must move; of the others, Maglev moves only a few.
        assert!(
            moved * 100 / kept < 15,
            "moved {moved} of {kept} slots of remaining backends"
        );
    }

    #[test]
    fn weights_give_proportional_shares() {
        let b = vec![("a".to_string(), 1), ("b".to_string(), 3)];
        let c = counts(&table(&b).unwrap(), 2);
        let share = c[1] as f64 / MAGLEV_SIZE as f64;
        assert!((0.70..0.80).contains(&share), "weight 3 of 4 got {share}");
    }
}
