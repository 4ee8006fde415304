//! Step 4: the coordinator finds the points present in every final list.
//!
//! Memory is bounded and allocated up front: one hash table over the
//! shortest list (its points borrowed, not copied), sized to that list, and
//! one `u32` per row of it for each other list. No allocation per point.

use std::collections::HashMap;

use super::ProtocolError;

/// The intersection: per list, the positions (ascending) of matched keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matches {
    /// Number of keys present in all lists.
    pub count: u64,
    /// `positions[i]`: matched positions in list `i`, ascending. Sorting hides
    /// the pairing between lists from each unmasker.
    pub positions: Vec<Vec<u64>>,
}

const NONE: u32 = u32::MAX;

/// Intersects the final (fully blinded, possibly truncated) lists. `names`
/// labels errors; `point_len` is the width of each point in bytes. A point
/// repeated in the indexed list, or matched twice from another list, is an
/// error naming the list.
pub fn match_lists(
    lists: &[&[u8]],
    point_len: usize,
    names: &[&str],
) -> Result<Matches, ProtocolError> {
    let n = lists.len();
    for (i, l) in lists.iter().enumerate() {
        if point_len == 0
            || !l.len().is_multiple_of(point_len)
            || l.len() / point_len >= NONE as usize
        {
            return Err(ProtocolError::Violation(format!(
                "final list of {} is not a whole number of {point_len}-byte points (or too long)",
                names[i]
            )));
        }
    }
    // Index the shortest list; probe the others against it.
    let base = (0..n).min_by_key(|&i| lists[i].len()).unwrap_or(0);
    let base_len = lists[base].len() / point_len;
    let mut index: HashMap<&[u8], u32> = HashMap::with_capacity(base_len);
    for (j, p) in lists[base].chunks_exact(point_len).enumerate() {
        if index.insert(p, j as u32).is_some() {
            return Err(ProtocolError::RepeatedPoint(names[base].to_string()));
        }
    }
    // found[k][j]: position in the k-th other list of base row j.
    let others: Vec<usize> = (0..n).filter(|&i| i != base).collect();
    let mut found = vec![vec![NONE; base_len]; others.len()];
    for (k, &i) in others.iter().enumerate() {
        for (j, p) in lists[i].chunks_exact(point_len).enumerate() {
            if let Some(&b) = index.get(p) {
                let slot = &mut found[k][b as usize];
                if *slot != NONE {
                    return Err(ProtocolError::RepeatedPoint(names[i].to_string()));
                }
                *slot = j as u32;
            }
        }
    }
    drop(index);
    let mut positions = vec![Vec::new(); n];
    let mut count = 0;
    for j in 0..base_len {
        if found.iter().all(|f| f[j] != NONE) {
            count += 1;
            positions[base].push(j as u64);
            for (k, &i) in others.iter().enumerate() {
                positions[i].push(found[k][j] as u64);
            }
        }
    }
    for p in &mut positions {
        p.sort_unstable();
    }
    Ok(Matches { count, positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_common_points() {
        let a = [1u8, 2, 3, 4];
        let b = [4u8, 9, 2, 1];
        let c = [2u8, 4, 5, 6];
        let m = match_lists(&[&a, &b, &c], 1, &["a", "b", "c"]).unwrap();
        assert_eq!(m.count, 2);
        assert_eq!(m.positions, vec![vec![1, 3], vec![0, 2], vec![0, 1]]);
        assert!(matches!(
            match_lists(&[&[1u8, 1], &[1u8, 2]], 1, &["a", "b"]),
            Err(ProtocolError::RepeatedPoint(p)) if p == "a"
        ));
        // A repeat in a probed list only matters when it matches.
        assert!(matches!(
            match_lists(&[&[1u8, 2], &[1u8, 1, 3]], 1, &["a", "b"]),
            Err(ProtocolError::RepeatedPoint(p)) if p == "b"
        ));
        assert_eq!(
            match_lists(&[&[1u8, 2], &[7u8, 7, 1]], 1, &["a", "b"])
                .unwrap()
                .count,
            1
        );
        assert!(matches!(
            match_lists(&[&[1u8, 2, 3], &[1u8, 2]], 2, &["a", "b"]),
            Err(ProtocolError::Violation(_))
        ));
        let empty = match_lists(&[&[], &[1u8]], 1, &["a", "b"]).unwrap();
        assert_eq!(empty.count, 0);
    }
}
