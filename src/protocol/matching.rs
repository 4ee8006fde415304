//! Step 4: the coordinator finds the points present in every final list.
//!
//! A partitioned hash join on all cores: every list is split by a keyed
//! hash of its points into partitions of about [`PART_ROWS`] rows of the
//! shortest list (each point copied as two words with its `u32` position,
//! 24 bytes a row, no other copy); then each partition builds a small table over the
//! shortest list's part and probes the other lists' parts against it, in
//! cache. Memory: 24 bytes per row of every list, and per partition being
//! worked on a table and one `u32` per row of the shortest list's part for
//! each other list. Both hashes (the split and the tables) are foldhash
//! under seeds drawn from the OS per run, so a bank that crafts its points
//! (without ever seeing a hash) cannot steer them into one partition or make
//! lookups collide. Each list's matched positions are then marked in a
//! bitmap of the list (one bit a row), which is also what the unmasker is
//! sent.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::quality::SeedableRandomState;
use rand::Rng;
use rayon::prelude::*;

use super::ProtocolError;
use crate::positions::Positions;
use crate::session::os_rng;

/// foldhash keyed from the OS's generator: the process-wide part drawn once,
/// the per-hasher part per run (foldhash's own `RandomState` seeds from
/// address-space layout only).
fn keyed_hasher() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(os_rng().next_u64()));
    SeedableRandomState::with_seed(os_rng().next_u64(), shared)
}

/// The intersection: per list, the set of its matched positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matches {
    /// Number of keys present in all lists.
    pub count: u64,
    /// `positions[i]`: matched positions in list `i`, as a set (a bitmap
    /// of the list, read ascending): it holds no pairing between lists.
    pub positions: Vec<Positions>,
}

const NONE: u32 = u32::MAX;

/// Rows of the shortest list per partition (its table then fits in cache).
pub const PART_ROWS: usize = 4096;

/// A point (at most 16 bytes, as two words) and its position in its list.
#[derive(Clone, Copy)]
struct Entry {
    point: [u64; 2],
    at: u32,
}

/// A point of at most 16 bytes as two words (one-to-one for a given
/// length).
#[inline]
fn words(p: &[u8]) -> [u64; 2] {
    // Whole 16-byte points (every final list's) as two fixed-size loads;
    // shorter ones zero-extended.
    let w: [u8; 16] = match p.try_into() {
        Ok(w) => w,
        Err(_) => {
            let mut w = [0u8; 16];
            w[..p.len()].copy_from_slice(p);
            w
        }
    };
    let v = u128::from_le_bytes(w);
    [v as u64, (v >> 64) as u64]
}

/// Splits a list of `stride`-byte rows into `parts` (a power of two)
/// partitions by `split`'s hash of each row's point (its first `point_len`
/// bytes), positions ascending within each (two passes over the list,
/// nothing allocated but the partitions).
fn partition(
    list: &[u8],
    stride: usize,
    point_len: usize,
    parts: usize,
    split: &SeedableRandomState,
) -> Vec<Vec<Entry>> {
    let shift = 64 - parts.trailing_zeros();
    let part = |w: &[u64; 2]| {
        if parts == 1 {
            0
        } else {
            (split.hash_one(w) >> shift) as usize
        }
    };
    let mut sizes = vec![0usize; parts];
    for p in list.chunks_exact(stride) {
        sizes[part(&words(&p[..point_len]))] += 1;
    }
    let mut out: Vec<Vec<Entry>> = sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
    for (at, p) in list.chunks_exact(stride).enumerate() {
        let point = words(&p[..point_len]);
        out[part(&point)].push(Entry {
            point,
            at: at as u32,
        });
    }
    out
}

/// Joins one partition: the matched rows, flat, each as the position in
/// the base list then the positions in `others` (in order); or the index
/// of the list that repeats a point.
fn join(
    base: &[Entry],
    others: &[&[Entry]],
    hasher: &SeedableRandomState,
) -> Result<Vec<u32>, usize> {
    let k = others.len();
    let mut index: HashMap<[u64; 2], u32, SeedableRandomState> =
        HashMap::with_capacity_and_hasher(base.len(), hasher.clone());
    for (local, e) in base.iter().enumerate() {
        if index.insert(e.point, local as u32).is_some() {
            return Err(k);
        }
    }
    if k == 0 {
        return Ok(base.iter().map(|e| e.at).collect());
    }
    // found[local * k + o]: position in other list `o` of base row `local`.
    let mut found = vec![NONE; base.len() * k];
    for (o, list) in others.iter().enumerate() {
        for e in list.iter() {
            if let Some(&local) = index.get(&e.point) {
                let slot = &mut found[local as usize * k + o];
                if *slot != NONE {
                    return Err(o);
                }
                *slot = e.at;
            }
        }
    }
    let mut rows = Vec::new();
    for (e, f) in base.iter().zip(found.chunks_exact(k)) {
        if f.iter().all(|&x| x != NONE) {
            rows.push(e.at);
            rows.extend_from_slice(f);
        }
    }
    Ok(rows)
}

/// Intersects the final (fully blinded, possibly truncated) lists. `names`
/// labels errors; `point_len` is the width of each point in bytes (1 to
/// 16; final points are 16). A point repeated in the shortest list, or
/// matched twice from another list, is an error naming the list.
pub fn match_lists(
    lists: &[&[u8]],
    point_len: usize,
    names: &[&str],
) -> Result<Matches, ProtocolError> {
    let n = lists.len();
    for (i, l) in lists.iter().enumerate() {
        if point_len == 0
            || point_len > 16
            || !l.len().is_multiple_of(point_len)
            || l.len() / point_len >= NONE as usize
        {
            return Err(ProtocolError::Violation(format!(
                "final list of {} is not a whole number of {point_len}-byte points (or too long)",
                names[i]
            )));
        }
    }
    // Index the shortest list; probe the others against it. No list, or an
    // empty one: nothing matches.
    let Some(base) = (0..n)
        .min_by_key(|&i| lists[i].len())
        .filter(|&b| !lists[b].is_empty())
    else {
        return Ok(Matches {
            count: 0,
            positions: lists
                .iter()
                .map(|l| Positions::new((l.len() / point_len) as u64))
                .collect::<Result<_, _>>()?,
        });
    };
    let others: Vec<usize> = (0..n).filter(|&i| i != base).collect();
    let base_len = lists[base].len() / point_len;
    let parts = (base_len / PART_ROWS).max(1).next_power_of_two();
    let (split, tables) = (keyed_hasher(), keyed_hasher());
    let parted: Vec<Vec<Vec<Entry>>> = lists
        .par_iter()
        .map(|l| partition(l, point_len, point_len, parts, &split))
        .collect();
    let joined: Vec<Result<Vec<u32>, usize>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let theirs: Vec<&[Entry]> = others.iter().map(|&i| parted[i][p].as_slice()).collect();
            join(&parted[base][p], &theirs, &tables)
        })
        .collect();
    drop(parted);
    // The first error by list: the shortest list's own repeat first, then
    // the other lists in order (whatever partition found it).
    if let Some(o) = joined
        .iter()
        .filter_map(|r| r.as_ref().err().copied())
        .min_by_key(|&o| (o != others.len(), o))
    {
        let list = others.get(o).copied().unwrap_or(base);
        return Err(ProtocolError::RepeatedPoint(names[list].to_string()));
    }
    // Each list's matched positions, marked in a bitmap of the list.
    let width = others.len() + 1;
    let joined: Vec<Vec<u32>> = joined.into_iter().flatten().collect();
    let count = joined.iter().map(|r| r.len() / width).sum::<usize>() as u64;
    // A list's column in the joined rows: the base first, then the others.
    let column = |list: usize| match others.iter().position(|&i| i == list) {
        Some(o) => o + 1,
        None => 0,
    };
    let positions: Vec<Positions> = (0..n)
        .into_par_iter()
        .map(|list| {
            let column = column(list);
            let mut set = Positions::new((lists[list].len() / point_len) as u64)?;
            for part in &joined {
                set.mark(part.chunks_exact(width).map(|row| row[column]));
            }
            // `join` refuses a point matched twice, so no bit is set twice.
            debug_assert_eq!(set.count(), count);
            Ok(set)
        })
        .collect::<Result<_, ProtocolError>>()?;
    Ok(Matches { count, positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each list's matched positions, ascending.
    fn ascending(m: &Matches) -> Vec<Vec<u64>> {
        m.positions.iter().map(|p| p.iter().collect()).collect()
    }

    #[test]
    fn finds_common_points() {
        let a = [1u8, 2, 3, 4];
        let b = [4u8, 9, 2, 1];
        let c = [2u8, 4, 5, 6];
        let m = match_lists(&[&a, &b, &c], 1, &["a", "b", "c"]).unwrap();
        assert_eq!(m.count, 2);
        assert_eq!(ascending(&m), vec![vec![1, 3], vec![0, 2], vec![0, 1]]);
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
        let one = match_lists(&[&[5u8, 6, 7]], 1, &["a"]).unwrap();
        assert_eq!((one.count, ascending(&one)), (3, vec![vec![0, 1, 2]]));
        assert_eq!(empty.positions[1].list_len(), 1);
    }

    /// The plain intersection, by sorting: positions per list, ascending.
    fn reference(lists: &[Vec<[u8; 16]>]) -> Vec<Vec<u64>> {
        use std::collections::BTreeSet;
        let sets: Vec<BTreeSet<[u8; 16]>> =
            lists.iter().map(|l| l.iter().copied().collect()).collect();
        let common: BTreeSet<[u8; 16]> = lists[0]
            .iter()
            .filter(|p| sets.iter().all(|s| s.contains(*p)))
            .copied()
            .collect();
        lists
            .iter()
            .map(|l| {
                (0..l.len() as u64)
                    .filter(|&j| common.contains(&l[j as usize]))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn many_partitions_give_the_plain_intersection() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let mut point = || {
            let mut p = [0u8; 16];
            rng.fill_bytes(&mut p);
            p
        };
        // Three lists of different lengths (several partitions each): a
        // part shared by all, a part shared by two only, and points of
        // their own.
        let shared: Vec<[u8; 16]> = (0..3000).map(|_| point()).collect();
        let pair: Vec<[u8; 16]> = (0..2000).map(|_| point()).collect();
        let mut a: Vec<[u8; 16]> = shared.iter().chain(&pair).copied().collect();
        a.extend((0..4 * PART_ROWS).map(|_| point()));
        let mut b: Vec<[u8; 16]> = pair.iter().chain(&shared).copied().collect();
        b.extend((0..3 * PART_ROWS).map(|_| point()));
        let mut c: Vec<[u8; 16]> = (0..5 * PART_ROWS).map(|_| point()).collect();
        c.extend(shared.iter().rev().step_by(2));
        for l in [&mut a, &mut b, &mut c] {
            // A fixed shuffle per list.
            for i in (1..l.len()).rev() {
                let j = (point()[0] as usize * 256 + point()[1] as usize) % (i + 1);
                l.swap(i, j);
            }
        }
        let lists = vec![a, b, c];
        let flat: Vec<Vec<u8>> = lists.iter().map(|l| l.concat()).collect();
        let refs: Vec<&[u8]> = flat.iter().map(|l| l.as_slice()).collect();
        let m = match_lists(&refs, 16, &["a", "b", "c"]).unwrap();
        let want = reference(&lists);
        assert_eq!(m.count, 1500);
        assert_eq!(ascending(&m), want);
        let two = match_lists(&refs[..2], 16, &["a", "b"]).unwrap();
        assert_eq!(two.count, 5000);
        assert_eq!(ascending(&two), reference(&lists[..2]));
        // Repeats: in the shortest list, always named first.
        let mut shortest = lists[1].clone();
        shortest.push(shortest[10]);
        let mut other = lists[0].clone();
        other.push(shared[0]);
        let (s, o) = (shortest.concat(), other.concat());
        for _ in 0..5 {
            assert!(matches!(
                match_lists(&[&o, &s], 16, &["a", "b"]),
                Err(ProtocolError::RepeatedPoint(p)) if p == "b"
            ));
        }
        assert!(matches!(
            match_lists(&[&o, &flat[1]], 16, &["a", "b"]),
            Err(ProtocolError::RepeatedPoint(p)) if p == "a"
        ));
    }
}
