//! The blinding ring and the unmasking roles (DESIGN.md steps 3 and 5).
//!
//! List `i` is blinded by its owner, then passes through parties `i+1, …,
//! i+n-1` (mod n); the last of them returns truncated points. The unmasker of
//! list `i` is `i+1`, and the node whose mask sums a party computes is `i-1`.

/// The parties a list passes through after its owner, in order.
pub fn route(owner: usize, n: usize) -> Vec<usize> {
    (1..n).map(|d| (owner + d) % n).collect()
}

/// Whether `party` performs the final (truncating) pass over `owner`'s list.
pub fn is_final_pass(owner: usize, party: usize, n: usize) -> bool {
    (owner + n - 1) % n == party
}

/// The party that holds the mask seed of `owner`'s list.
pub fn unmasker(owner: usize, n: usize) -> usize {
    (owner + 1) % n
}

/// The list whose masks `party` sums: its predecessor's.
pub fn unmasked_list(party: usize, n: usize) -> usize {
    (party + n - 1) % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_meets_every_other_party_once() {
        for n in 2..6 {
            for owner in 0..n {
                let r = route(owner, n);
                assert_eq!(r.len(), n - 1);
                assert!(!r.contains(&owner));
                assert!(is_final_pass(owner, *r.last().unwrap(), n));
                assert_eq!(unmasked_list(unmasker(owner, n), n), owner);
            }
        }
    }
}
