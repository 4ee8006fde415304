//! The local step's duplicate check: whether any element repeats in a
//! node's own list (equal keys give equal elements, and a repeated element
//! would show the coordinator which rows share a key).
//!
//! A filter, then an exact check only if the filter fires. The filter gives
//! each element a 64-bit fingerprint (a function of all its bytes and of a
//! seed drawn from the OS per check: equal elements, equal fingerprints;
//! without the seed, elements cannot be prepared to collide or to crowd one
//! partition), sorts the fingerprints by their top bits into partitions of
//! [`PART_ROWS`] rows or fewer on average (a counting sort: two passes over
//! the list), and looks for a repeated fingerprint in each partition with a
//! small open-addressing table that fits in cache, the partitions on all
//! cores. Memory: 8 bytes per row (zeroized after), and a table per
//! partition being worked on. Fingerprints of distinct elements collide
//! with probability about `n² / 2^65`; when any fingerprint repeats, the
//! exact check sorts references to the elements (16 bytes per row, the
//! fingerprints already freed) and compares neighbours, so the answer never
//! depends on a fingerprint.

use rand::Rng;
use rayon::prelude::*;
use zeroize::Zeroize;

use crate::session::os_rng;

/// Rows per partition, about (its table then fits in cache).
pub const PART_ROWS: usize = 4096;

/// Whether the element (the first `len` bytes) of any two rows of `rows`
/// (`stride` bytes each, `1 ≤ len ≤ stride`; a trailing partial row is
/// ignored) is the same.
pub fn any_repeat(rows: &[u8], stride: usize, len: usize) -> bool {
    any_repeat_seeded(rows, stride, len, os_rng().next_u64())
}

/// [`any_repeat`] with the fingerprints' seed given.
fn any_repeat_seeded(rows: &[u8], stride: usize, len: usize, seed: u64) -> bool {
    assert!(
        len >= 1 && stride >= len,
        "any_repeat: elements of at least one byte within their rows"
    );
    let elements = || rows.chunks_exact(stride).map(|r| &r[..len]);
    let n = rows.len() / stride;
    if n < 2 {
        return false;
    }
    // Fixed-length fingerprints for tags and points (unrolled loads).
    let repeats = match len {
        16 => fingerprints_repeat(elements().map(|e| fingerprint(fixed::<16>(e), seed)), n),
        32 => fingerprints_repeat(elements().map(|e| fingerprint(fixed::<32>(e), seed)), n),
        _ => fingerprints_repeat(elements().map(|e| fingerprint(e, seed)), n),
    };
    if !repeats {
        return false;
    }
    let mut sorted: Vec<&[u8]> = elements().collect();
    sorted.par_sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

/// An element of length `N` as an array.
#[inline]
fn fixed<const N: usize>(e: &[u8]) -> &[u8; N] {
    e.try_into().expect("elements of the checked length")
}

/// A 64-bit fingerprint of an element under `seed`: its 8-byte words (the
/// last one zero-padded) folded by multiplication into the seed and the
/// length, then mixed (MurmurHash3's finaliser) so that the top and bottom
/// bits are both well spread. Not collision-resistant: a filter only.
#[inline(always)]
fn fingerprint(element: &[u8], seed: u64) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let (words, rest) = element.as_chunks::<8>();
    let mut h = seed ^ element.len() as u64;
    for w in words {
        h = (h.rotate_left(23) ^ u64::from_le_bytes(*w)).wrapping_mul(K);
    }
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// Whether any of the `n` fingerprints `prints` yields repeats: a counting
/// sort by the top bits into partitions, then a table per partition.
fn fingerprints_repeat(prints: impl Iterator<Item = u64> + Clone, n: usize) -> bool {
    let bits = n.div_ceil(PART_ROWS).next_power_of_two().trailing_zeros();
    let part = |h: u64| h.checked_shr(64 - bits).unwrap_or(0) as usize;
    let mut starts = vec![0usize; (1 << bits) + 1];
    for h in prints.clone() {
        starts[part(h) + 1] += 1;
    }
    for p in 1..starts.len() {
        starts[p] += starts[p - 1];
    }
    let mut next = starts.clone();
    let mut sorted = vec![0u64; n];
    for h in prints {
        let at = &mut next[part(h)];
        sorted[*at] = h;
        *at += 1;
    }
    let repeats = starts
        .par_windows(2)
        .any(|w| table_repeats(&sorted[w[0]..w[1]]));
    // Fingerprints of the grouping party's key digests would help a
    // dictionary attack on its keys: wiped.
    sorted.zeroize();
    repeats
}

/// Whether a value repeats in `part`: linear probing in a table of at
/// least twice its size, indexed by the low bits (the top bits are the
/// partition's); 0 marks an empty slot, so the value 0 is tracked apart.
fn table_repeats(part: &[u64]) -> bool {
    let size = (2 * part.len()).next_power_of_two().max(16);
    let mask = size - 1;
    let mut table = vec![0u64; size];
    let mut zero = false;
    for &h in part {
        if h == 0 {
            if zero {
                return true;
            }
            zero = true;
            continue;
        }
        let mut i = h as usize & mask;
        loop {
            match table[i] {
                0 => {
                    table[i] = h;
                    break;
                }
                v if v == h => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_found_in_strided_rows() {
        let rows: Vec<u8> = (0..3 * PART_ROWS as u32)
            .flat_map(|i| {
                let mut r = [0xAAu8; 20];
                r[..4].copy_from_slice(&i.to_le_bytes());
                r
            })
            .collect();
        assert!(!any_repeat(&rows, 20, 16));
        assert!(!any_repeat(&rows, 20, 4));
        assert!(!any_repeat(&rows, 20, 20));
        // Bytes outside the element do not count; bytes inside do.
        assert!(any_repeat(&rows, 20, 1));
        let mut again = rows.clone();
        again.extend_from_slice(&rows[20 * 77..20 * 78]);
        assert!(any_repeat(&again, 20, 16));
        assert!(any_repeat(&again, 20, 20));
        assert!(!any_repeat(&[], 16, 16));
        assert!(!any_repeat(&[1u8; 16], 16, 16));
        assert!(any_repeat(&[0u8; 32], 16, 16));
    }

    #[test]
    fn the_exact_check_decides_when_fingerprints_collide() {
        // Two distinct elements with one fingerprint under seed 0 (built
        // by inverting the fold): the filter fires, the exact check says
        // no repeat.
        let a = hex::decode("01000000000000000200000000000000").unwrap();
        let b = hex::decode("030000000000000084486615844a814b").unwrap();
        assert_eq!(fingerprint(&a, 0), fingerprint(&b, 0));
        let rows = [a.as_slice(), &b].concat();
        assert!(fingerprints_repeat(
            rows.chunks(16).map(|e| fingerprint(e, 0)),
            2
        ));
        assert!(!any_repeat_seeded(&rows, 16, 16, 0));
        assert!(any_repeat_seeded(
            &[rows.as_slice(), &a].concat(),
            16,
            16,
            0
        ));
        // Under another seed they differ.
        assert_ne!(fingerprint(&a, 1), fingerprint(&b, 1));
        // The parts:
        assert!(fingerprints_repeat([5u64, 9, 5].into_iter(), 3));
        assert!(fingerprints_repeat([0u64, 0].into_iter(), 2));
        assert!(!fingerprints_repeat([0u64, 1, u64::MAX].into_iter(), 3));
        assert!(!table_repeats(&[7, 7 + 16]));
        assert!(table_repeats(&[7, 7 + 16, 7]));
        // Many partitions, every fingerprint distinct.
        let spread: Vec<u64> = (1..=20 * PART_ROWS as u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        assert!(!fingerprints_repeat(spread.iter().copied(), spread.len()));
        let mut twice = spread.clone();
        twice.push(spread[12345]);
        assert!(fingerprints_repeat(twice.iter().copied(), twice.len()));
    }

    #[test]
    fn equal_elements_have_equal_fingerprints_and_lengths_count() {
        let s = 0x1234;
        assert_eq!(fingerprint(b"abcdefghij", s), fingerprint(b"abcdefghij", s));
        assert_ne!(fingerprint(b"abcdefghij", s), fingerprint(b"abcdefghik", s));
        assert_ne!(fingerprint(b"ab", s), fingerprint(b"ab\0", s));
        assert_ne!(fingerprint(&[1; 32], s), fingerprint(&[1; 16], s));
    }
}
