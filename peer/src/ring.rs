//! Rendezvous (highest random weight) hashing: each digest has an ordered list of owner nodes,
//! computed the same way by every node from the membership alone. When a node joins or leaves,
//! only the digests it owned move.

use sha2::{Digest as _, Sha256};

/// The weight of `node` for `key`: the first 8 bytes of sha256(key ‖ 0 ‖ node).
pub(crate) fn weight(key: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The `k` owners of `key` among `nodes`, highest weight first (ties by name, so the order is
/// total). Duplicates in `nodes` count once.
pub fn owners<'a>(key: &str, nodes: impl IntoIterator<Item = &'a str>, k: usize) -> Vec<String> {
    let mut w: Vec<(u64, &str)> = nodes.into_iter().map(|n| (weight(key, n), n)).collect();
    w.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    w.dedup_by(|a, b| a.1 == b.1);
    w.into_iter().take(k).map(|(_, n)| n.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_computes_the_same_owners_whatever_the_order_of_its_list() {
        let a = [
            "10.0.0.1:5001",
            "10.0.0.2:5001",
            "10.0.0.3:5001",
            "10.0.0.4:5001",
        ];
        let mut b = a;
        b.reverse();
        for key in ["sha256:aa", "sha256:bb", "sha256:cc"] {
            assert_eq!(owners(key, a, 2), owners(key, b, 2));
            assert_eq!(owners(key, a, 2).len(), 2);
        }
        assert_eq!(owners("sha256:aa", a, 9).len(), 4);
        assert!(owners("sha256:aa", [], 3).is_empty());
    }

    #[test]
    fn a_leaving_node_moves_only_the_keys_it_owned() {
        let nodes: Vec<String> = (0..20).map(|i| format!("10.0.0.{i}:5001")).collect();
        let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let without: Vec<&str> = all.iter().copied().filter(|n| *n != all[7]).collect();
        let mut moved = 0;
        for i in 0..2000 {
            let key = format!("sha256:{i:064x}");
            let before = owners(&key, all.iter().copied(), 1);
            let after = owners(&key, without.iter().copied(), 1);
            if before != after {
                assert_eq!(before[0], all[7], "only the leaving node's keys move");
                moved += 1;
            }
        }
        // About 1/20 of the keys, and certainly not none.
        assert!((40..=200).contains(&moved), "{moved} keys moved");
    }
}
