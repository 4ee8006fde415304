//! Step 4: the coordinator finds the points present in every final list.

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

/// Intersects the final (fully blinded, possibly truncated) lists. `names`
/// labels errors; `point_len` is the width of each point in bytes.
pub fn match_lists(
    lists: &[&[u8]],
    point_len: usize,
    names: &[&str],
) -> Result<Matches, ProtocolError> {
    let n = lists.len();
    for (i, l) in lists.iter().enumerate() {
        if point_len == 0 || l.len() % point_len != 0 {
            return Err(ProtocolError::Violation(format!(
                "final list of {} is not a whole number of {point_len}-byte points",
                names[i]
            )));
        }
    }
    // Index the shortest list; probe the others against it.
    let base = (0..n).min_by_key(|&i| lists[i].len()).unwrap_or(0);
    let mut index: HashMap<&[u8], Vec<Option<u64>>> =
        HashMap::with_capacity(lists[base].len() / point_len);
    for (j, p) in lists[base].chunks_exact(point_len).enumerate() {
        let mut slots = vec![None; n];
        slots[base] = Some(j as u64);
        if index.insert(p, slots).is_some() {
            return Err(ProtocolError::RepeatedPoint(names[base].to_string()));
        }
    }
    for (i, l) in lists.iter().enumerate() {
        if i == base {
            continue;
        }
        let mut seen = std::collections::HashSet::with_capacity(l.len() / point_len);
        for (j, p) in l.chunks_exact(point_len).enumerate() {
            if !seen.insert(p) {
                return Err(ProtocolError::RepeatedPoint(names[i].to_string()));
            }
            if let Some(slots) = index.get_mut(p) {
                slots[i] = Some(j as u64);
            }
        }
    }
    let mut positions = vec![Vec::new(); n];
    let mut count = 0;
    for slots in index.values() {
        if slots.iter().all(Option::is_some) {
            count += 1;
            for (i, s) in slots.iter().enumerate() {
                positions[i].push(s.expect("checked above"));
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
            match_lists(&[&[1u8, 1], &[1u8]], 1, &["a", "b"]),
            Err(ProtocolError::RepeatedPoint(p)) if p == "a"
        ));
        assert!(matches!(
            match_lists(&[&[1u8, 2, 3], &[1u8, 2]], 2, &["a", "b"]),
            Err(ProtocolError::Violation(_))
        ));
    }
}
