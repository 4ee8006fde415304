//! Step 4: the coordinator finds the points present in every final list.
//!
//! A partitioned hash join on all cores. Every list is split by a keyed hash
//! of its points into partitions while it arrives ([`FinalList::push`], one
//! pass per chunk as the coordinator receives it): each point is kept as
//! two words with its `u32` position, 24 bytes a row, written once and
//! never moved (a partition grows by adding segments, not by copying). A
//! list's partition count follows its announced length (about [`PART_ROWS`]
//! rows a partition, a power of two, at most 2^16), and partitions are the
//! top bits of one hash shared by every list of the run ([`Split`]), so a
//! partition at a lower count holds the same hashes as a range of
//! partitions at a higher one. Once every list is in, the join runs at the
//! fewest partitions of any list (normally the shortest list's): each
//! partition of the shortest list builds a small table and the other
//! lists' entries for it are probed against it, in cache, each entry once.
//! Memory: 24 bytes per row of every list and a margin (a partition's
//! segments double its room as rows arrive, from 8, but to the size the
//! announcement leads to expect rather than past it: room is added only
//! when a row finds the last segment full, never for the announcement
//! alone), 48 bytes per partition once rows arrive and 24 more per segment
//! (about 400 bytes for a partition of 4096 rows), and per partition being
//! worked on a table
//! and one `u32` per row of the shortest list's part for each other list.
//! Both hashes (the split and the tables) are foldhash under seeds drawn
//! from the OS per run, so a bank that crafts its points (without ever
//! seeing a hash) cannot steer them into one partition or make lookups
//! collide. Each list's matched positions are then marked in a bitmap of
//! the list (one bit a row), which is also what the unmasker is sent.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::quality::SeedableRandomState;
use rand::Rng;
use rayon::prelude::*;

use super::{MAX_LIST_ROWS, ProtocolError};
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

/// Rows per partition a list is split into, by its announced length (the
/// shortest list's partitions then fit their tables in cache).
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

/// The keyed hash that splits every final list of one run into
/// partitions (its top bits), seeded from the OS for the run.
#[derive(Clone)]
pub struct Split {
    hasher: SeedableRandomState,
    /// Tells splits apart: lists split under different ones cannot be
    /// matched partition by partition.
    id: u64,
}

impl Split {
    /// A fresh split for one run.
    pub fn new() -> Self {
        Split {
            hasher: keyed_hasher(),
            id: os_rng().next_u64(),
        }
    }
}

impl Default for Split {
    fn default() -> Self {
        Split::new()
    }
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Split(<keyed>)")
    }
}

/// One partition of a list: its entries in segments that are never moved.
/// When the last segment is full a new one is added, as large as the
/// partition so far (doubling its room, as a vector would, but without
/// copying: every row is written once), and no larger than what brings the
/// partition to its expected size, while it is below it.
#[derive(Clone, Default)]
struct Part {
    /// Full segments, in arrival order.
    full: Vec<Vec<Entry>>,
    /// The segment being filled (after `full`).
    open: Vec<Entry>,
}

impl Part {
    /// Appends one entry; `expected` is the partition's expected size.
    #[inline]
    fn push(&mut self, entry: Entry, expected: usize) {
        if self.open.len() == self.open.capacity() {
            self.grow(expected);
        }
        self.open.push(entry);
    }

    /// Moves the full open segment to `full` and opens the next.
    #[cold]
    fn grow(&mut self, expected: usize) {
        let len = self.len();
        let doubling = len.max(8);
        let room = if len < expected {
            doubling.min(expected - len)
        } else {
            doubling
        };
        let open = std::mem::replace(&mut self.open, Vec::with_capacity(room));
        if !open.is_empty() {
            self.full.push(open);
        }
    }

    /// Entries in the partition.
    fn len(&self) -> usize {
        self.full.iter().map(Vec::len).sum::<usize>() + self.open.len()
    }

    /// Entry slots allocated.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.full.iter().map(Vec::capacity).sum::<usize>() + self.open.capacity()
    }

    /// The entries, in arrival order.
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.full.iter().flatten().chain(&self.open)
    }
}

/// Most partitions of one list: 2^16 (a list of [`MAX_LIST_ROWS`] rows has
/// 2^16 of about 4096).
const MAX_PART_BITS: u32 = 16;

/// One final list as the coordinator receives it, split into partitions
/// of its points as they arrive.
#[derive(Clone)]
pub struct FinalList {
    split: Split,
    point_len: usize,
    /// log2 of the number of partitions.
    bits: u32,
    /// Rows a partition is expected to end with (from the announcement),
    /// and a margin: a partition's room grows by doubling, but stops at
    /// this before doubling again.
    expected: usize,
    /// Empty until the first rows arrive.
    parts: Vec<Part>,
    rows: u64,
}

impl std::fmt::Debug for FinalList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalList")
            .field("point_len", &self.point_len)
            .field("partitions", &(1usize << self.bits))
            .field("rows", &self.rows)
            .finish()
    }
}

impl FinalList {
    /// An empty final list of `point_len`-byte points (1 to 16) that its
    /// owner announced to have `announced` rows: the announcement sets the
    /// number of partitions (about [`PART_ROWS`] rows each, at most 2^16)
    /// and nothing is allocated until rows arrive; the first rows allocate
    /// the partitions (empty), 48 bytes each, at most 3 MiB.
    pub fn new(split: &Split, point_len: usize, announced: u64) -> Result<Self, ProtocolError> {
        if point_len == 0 || point_len > 16 {
            return Err(ProtocolError::Violation(format!(
                "final points of {point_len} bytes (1 to 16 expected)"
            )));
        }
        let bits = (announced / PART_ROWS as u64)
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .min(MAX_PART_BITS);
        let expected = (announced >> bits).min(MAX_LIST_ROWS) as usize;
        Ok(FinalList {
            split: split.clone(),
            point_len,
            bits,
            // The expected size plus four standard deviations (hashes
            // spread rows binomially) and a little.
            expected: expected + 4 * expected.isqrt() + 64,
            parts: Vec::new(),
            rows: 0,
        })
    }

    /// A whole list at once (tests and the in-memory run).
    pub fn from_points(
        split: &Split,
        point_len: usize,
        points: &[u8],
    ) -> Result<Self, ProtocolError> {
        let mut list = FinalList::new(split, point_len, (points.len() / point_len.max(1)) as u64)?;
        list.push(points)?;
        Ok(list)
    }

    /// Appends whole points at the next positions, each into its partition.
    /// A list has at most [`MAX_LIST_ROWS`] rows.
    pub fn push(&mut self, points: &[u8]) -> Result<(), ProtocolError> {
        let k = points.len() / self.point_len;
        if !points.len().is_multiple_of(self.point_len) || self.rows + k as u64 > MAX_LIST_ROWS {
            return Err(ProtocolError::Violation(format!(
                "final points are not a whole number of {}-byte points, or more than {MAX_LIST_ROWS}",
                self.point_len
            )));
        }
        if k == 0 {
            return Ok(());
        }
        if self.parts.is_empty() {
            self.parts = (0..1usize << self.bits).map(|_| Part::default()).collect();
        }
        let shift = 64 - self.bits;
        for (i, p) in points.chunks_exact(self.point_len).enumerate() {
            let point = words(p);
            let part = self
                .split
                .hasher
                .hash_one(point)
                .checked_shr(shift)
                .unwrap_or(0);
            self.parts[part as usize].push(
                Entry {
                    point,
                    at: (self.rows + i as u64) as u32,
                },
                self.expected,
            );
        }
        self.rows += k as u64;
        Ok(())
    }

    /// Rows received so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Width of its points in bytes.
    pub fn point_len(&self) -> usize {
        self.point_len
    }

    /// The entries whose hashes fall in partition `p` of 2^`bits` (at most
    /// this list's own count): a range of this list's partitions.
    fn parts_for(&self, p: usize, bits: u32) -> &[Part] {
        if self.parts.is_empty() {
            return &[];
        }
        let d = self.bits - bits;
        &self.parts[p << d..(p + 1) << d]
    }
}

/// Joins one partition: the matched rows, flat, each as the position in
/// the base list then the positions in `others` (in order; each list's
/// entries for the partition in one or more of its own partitions); or the
/// index of the list that repeats a point.
fn join(
    base: &[Part],
    others: &[&[Part]],
    hasher: &SeedableRandomState,
) -> Result<Vec<u32>, usize> {
    let k = others.len();
    let base_len = base.iter().map(Part::len).sum();
    let mut index: HashMap<[u64; 2], u32, SeedableRandomState> =
        HashMap::with_capacity_and_hasher(base_len, hasher.clone());
    for (local, e) in base.iter().flat_map(Part::iter).enumerate() {
        if index.insert(e.point, local as u32).is_some() {
            return Err(k);
        }
    }
    if k == 0 {
        return Ok(base.iter().flat_map(Part::iter).map(|e| e.at).collect());
    }
    // found[local * k + o]: position in other list `o` of base row `local`.
    let mut found = vec![NONE; base_len * k];
    for (o, list) in others.iter().enumerate() {
        for e in list.iter().flat_map(Part::iter) {
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
    for (e, f) in base.iter().flat_map(Part::iter).zip(found.chunks_exact(k)) {
        if f.iter().all(|&x| x != NONE) {
            rows.push(e.at);
            rows.extend_from_slice(f);
        }
    }
    Ok(rows)
}

/// Intersects the final (fully blinded, possibly truncated) lists, given
/// whole. `names` labels errors; `point_len` is the width of each point in
/// bytes (1 to 16; final points are 16). See [`match_finals`].
pub fn match_lists(
    lists: &[&[u8]],
    point_len: usize,
    names: &[&str],
) -> Result<Matches, ProtocolError> {
    let split = Split::new();
    if names.len() != lists.len() {
        return Err(ProtocolError::Violation(
            "one name per final list expected".into(),
        ));
    }
    let finals = lists
        .iter()
        .zip(names)
        .map(|(l, name)| {
            FinalList::from_points(&split, point_len, l).map_err(|_| {
                ProtocolError::Violation(format!(
                    "final list of {name} is not a whole number of {point_len}-byte points (or too long)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match_finals(&finals, names)
}

/// Intersects final lists split as they arrived (all under one [`Split`],
/// with points of one width). `names` labels errors. A point repeated in
/// the shortest list, or matched twice from another list, is an error
/// naming the list.
pub fn match_finals(lists: &[FinalList], names: &[&str]) -> Result<Matches, ProtocolError> {
    let n = lists.len();
    if names.len() != n {
        return Err(ProtocolError::Violation(
            "one name per final list expected".into(),
        ));
    }
    if lists
        .iter()
        .any(|l| l.point_len != lists[0].point_len || l.split.id != lists[0].split.id)
    {
        return Err(ProtocolError::Violation(
            "final lists of different point widths, or split under different hashes".into(),
        ));
    }
    // Index the shortest list; probe the others against it. No list, or an
    // empty one: nothing matches.
    let Some(base) = (0..n)
        .min_by_key(|&i| lists[i].rows)
        .filter(|&b| lists[b].rows > 0)
    else {
        return Ok(Matches {
            count: 0,
            positions: lists
                .iter()
                .map(|l| Positions::new(l.rows))
                .collect::<Result<_, _>>()?,
        });
    };
    let others: Vec<usize> = (0..n).filter(|&i| i != base).collect();
    // Joined at the fewest partitions of any list (normally the shortest
    // list's), so every entry is looked at once, whatever was announced.
    let bits = lists.iter().map(|l| l.bits).min().unwrap_or(0);
    let tables = keyed_hasher();
    let joined: Vec<Result<Vec<u32>, usize>> = (0..1usize << bits)
        .into_par_iter()
        .map(|p| {
            let theirs: Vec<&[Part]> = others
                .iter()
                .map(|&i| lists[i].parts_for(p, bits))
                .collect();
            join(lists[base].parts_for(p, bits), &theirs, &tables)
        })
        .collect();
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
            let mut set = Positions::new(lists[list].rows)?;
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
        // Split as they arrive, chunk by chunk, whatever partition counts
        // the announced lengths give (fewer, or more, than the shortest
        // list's): the same intersection.
        for announced in [[0, 0, 0], [1 << 20, 0, 1 << 14], [0, 1 << 16, 4096]] {
            let split = Split::new();
            let finals: Vec<FinalList> = flat
                .iter()
                .zip(announced)
                .map(|(l, ann)| {
                    let mut f = FinalList::new(&split, 16, ann).unwrap();
                    for chunk in l.chunks(16 * 1000) {
                        f.push(chunk).unwrap();
                    }
                    f
                })
                .collect();
            let split_m = match_finals(&finals, &["a", "b", "c"]).unwrap();
            assert_eq!((split_m.count, ascending(&split_m)), (1500, want.clone()));
        }
        // Lists split under different runs' hashes, or of other point
        // widths, are not matched.
        let split = Split::new();
        let narrow = FinalList::from_points(&split, 8, &flat[0][..64]).unwrap();
        let one = FinalList::from_points(&split, 16, &flat[1]).unwrap();
        let elsewhere = FinalList::from_points(&Split::new(), 16, &flat[0]).unwrap();
        assert!(matches!(
            match_finals(&[one.clone(), narrow], &["a", "b"]),
            Err(ProtocolError::Violation(_))
        ));
        assert!(matches!(
            match_finals(&[one, elsewhere], &["a", "b"]),
            Err(ProtocolError::Violation(_))
        ));
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
        // The same, split as they arrive with the shortest list in more, or
        // in fewer, partitions than the other.
        for [ann_o, ann_s] in [[0, 1 << 16], [1 << 16, 0], [1 << 20, 1 << 14]] {
            let split = Split::new();
            let split_list = |l: &[u8], announced| {
                let mut f = FinalList::new(&split, 16, announced).unwrap();
                for chunk in l.chunks(16 * 4096) {
                    f.push(chunk).unwrap();
                }
                f
            };
            let (fo, fs) = (split_list(&o, ann_o), split_list(&s, ann_s));
            assert!(matches!(
                match_finals(&[fo.clone(), fs], &["a", "b"]),
                Err(ProtocolError::RepeatedPoint(p)) if p == "b"
            ));
            assert!(matches!(
                match_finals(&[fo, split_list(&flat[1], ann_s)], &["a", "b"]),
                Err(ProtocolError::RepeatedPoint(p)) if p == "a"
            ));
        }
        // One name per list.
        assert!(matches!(
            match_lists(&refs, 16, &["a", "b"]),
            Err(ProtocolError::Violation(_))
        ));
        let one = FinalList::from_points(&Split::new(), 16, &flat[0]).unwrap();
        assert!(matches!(
            match_finals(&[one], &[]),
            Err(ProtocolError::Violation(_))
        ));
    }

    #[test]
    fn a_partition_keeps_its_rows_in_place_and_in_order() {
        let expected = 4416;
        let rows = 3 * expected as u32;
        let mut part = Part::default();
        let entry = |i: u32| Entry {
            point: [u64::from(i), !u64::from(i)],
            at: i,
        };
        // Where each row was written.
        let mut written: Vec<*const Entry> = Vec::new();
        for i in 0..rows {
            part.push(entry(i), expected);
            written.push(part.open.last().unwrap());
            let len = i as usize + 1;
            // Room doubles at most (from 8), and stops at the expected size.
            assert!(
                part.capacity() <= (2 * len).max(8),
                "{} for {len}",
                part.capacity()
            );
            if len == expected {
                assert_eq!(part.capacity(), expected);
            }
        }
        // Segments that double (so a few of them), stopping once at the
        // expected size.
        let segments: Vec<usize> = part
            .full
            .iter()
            .chain([&part.open])
            .map(Vec::capacity)
            .collect();
        assert_eq!(
            segments,
            [8, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 320, 4416, 8832]
        );
        // Never moved: every row is where it was written, in arrival order.
        assert_eq!(part.len(), rows as usize);
        assert!(part.iter().map(|e| e as *const Entry).eq(written));
        assert!(part.iter().map(|e| e.at).eq(0..rows));
        assert!(part.iter().all(|e| e.point == entry(e.at).point));
    }

    #[test]
    fn partitions_grow_to_their_expected_size_not_past_it() {
        let split = Split::new();
        let rows = 1u64 << 20;
        let mut f = FinalList::new(&split, 16, rows).unwrap();
        // Nothing allocated on the announcement.
        assert!(f.parts.is_empty());
        let mut points = vec![0u8; rows as usize * 16];
        for (i, p) in points.chunks_exact_mut(16).enumerate() {
            p[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        for chunk in points.chunks(16 * 4096) {
            f.push(chunk).unwrap();
        }
        assert_eq!(f.rows(), rows);
        let cap: usize = f.parts.iter().map(Part::capacity).sum();
        // Entry slots: 24 bytes a row and a small margin, not the
        // doubling's up to 2x (each partition's segment list is apart).
        assert!(cap < rows as usize * 5 / 4, "{cap} slots for {rows} rows");
    }
}
