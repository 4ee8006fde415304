//! A set of row positions of one list (step 5's matched rows, plus DP
//! dummy rows), as a bitmap of the list: one bit a row.
//!
//! The coordinator marks matched rows in it as it matches, the unmasker
//! receives it and sums the masks of the rows it names. The set is the
//! same information as the ascending positions it replaces: which rows of
//! the list are summed. The form is fixed by the list's length alone
//! (`⌈len/8⌉` bytes, whatever the count), so its size says nothing the
//! receiver does not already know, and it cannot name a row twice or out
//! of order. Parsing is strict: exactly `⌈len/8⌉` bytes, no bit at or past
//! `len`.

use thiserror::Error;

use crate::protocol::MAX_LIST_ROWS;

/// Errors building or parsing a position set.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PositionsError {
    /// A position is outside the list it refers to.
    #[error("position {position} out of range for a list of {len} rows")]
    OutOfRange {
        /// The offending position.
        position: u64,
        /// The list length.
        len: u64,
    },
    /// A position list is not strictly ascending (a repeat or out of
    /// order), at this position.
    #[error("position {0} repeats or is out of ascending order")]
    NotAscending(u64),
    /// A bitmap whose size is not one bit per row of its list.
    #[error("position bitmap of {bytes} bytes for a list of {len} rows (needs {})", len.div_ceil(8))]
    BitmapLength {
        /// Bytes received.
        bytes: usize,
        /// The list length.
        len: u64,
    },
    /// A list longer than any list may be ([`MAX_LIST_ROWS`]).
    #[error("a list of {0} rows is longer than any list may be ({MAX_LIST_ROWS} rows)")]
    ListTooLong(u64),
}

/// Positions of a list of [`Positions::list_len`] rows: bit `j` set iff row
/// `j` is in the set. Iterates ascending.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Positions {
    /// Bit `j % 64` of word `j / 64` is row `j`; no bit at or past `len`.
    words: Vec<u64>,
    /// Rows of the list.
    len: u64,
}

impl std::fmt::Debug for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Positions")
            .field("list_len", &self.len)
            .field("count", &self.count())
            .finish()
    }
}

/// Words of a bitmap of `len` rows, for a list no longer than any list may
/// be (so a peer's length never sizes an allocation beyond 32 MiB).
fn words_for(len: u64) -> Result<usize, PositionsError> {
    if len > MAX_LIST_ROWS {
        return Err(PositionsError::ListTooLong(len));
    }
    Ok(len.div_ceil(64) as usize)
}

impl Positions {
    /// The empty set of a list of `len` rows (`⌈len/64⌉` zero words).
    pub fn new(len: u64) -> Result<Self, PositionsError> {
        Ok(Positions {
            words: vec![0; words_for(len)?],
            len,
        })
    }

    /// The set of `positions`, which must be strictly ascending and below
    /// `len`.
    pub fn from_ascending(len: u64, positions: &[u64]) -> Result<Self, PositionsError> {
        let mut set = Positions::new(len)?;
        let mut prev: Option<u64> = None;
        for &p in positions {
            if prev.is_some_and(|q| p <= q) {
                return Err(PositionsError::NotAscending(p));
            }
            set.insert(p)?;
            prev = Some(p);
        }
        Ok(set)
    }

    /// Rows of the list the set refers to.
    pub fn list_len(&self) -> u64 {
        self.len
    }

    /// Number of positions in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether `position` is in the set (false past the list's end).
    pub fn contains(&self, position: u64) -> bool {
        position < self.len && self.words[(position / 64) as usize] & (1 << (position % 64)) != 0
    }

    /// Adds `position`; returns whether it was new.
    pub fn insert(&mut self, position: u64) -> Result<bool, PositionsError> {
        if position >= self.len {
            return Err(PositionsError::OutOfRange {
                position,
                len: self.len,
            });
        }
        let (word, bit) = ((position / 64) as usize, 1u64 << (position % 64));
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        Ok(new)
    }

    /// Adds positions known to be below `len` (the coordinator's own
    /// matches, rows of the list it matched): no range check but the
    /// slice's (and a debug one).
    pub(crate) fn mark(&mut self, positions: impl IntoIterator<Item = u32>) {
        for p in positions {
            debug_assert!(u64::from(p) < self.len);
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// The positions, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let base = w as u64 * 64;
            let mut word = word;
            std::iter::from_fn(move || {
                (word != 0).then(|| {
                    let bit = word.trailing_zeros();
                    word &= word - 1;
                    base + u64::from(bit)
                })
            })
        })
    }

    /// The wire form: `⌈len/8⌉` bytes, row `j` at bit `j % 8` (least
    /// significant first) of byte `j / 8`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(self.len.div_ceil(8) as usize);
        out
    }

    /// Parses the wire form of a set over a list of `len` rows: exactly
    /// `⌈len/8⌉` bytes and no bit at or past `len`.
    pub fn from_bytes(bytes: &[u8], len: u64) -> Result<Self, PositionsError> {
        if bytes.len() as u64 != len.div_ceil(8) {
            return Err(PositionsError::BitmapLength {
                bytes: bytes.len(),
                len,
            });
        }
        let mut set = Positions::new(len)?;
        for (word, b) in set.words.iter_mut().zip(bytes.chunks(8)) {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            *word = u64::from_le_bytes(w);
        }
        // Bits past the end: only in the last word.
        if let Some(last) = set.words.last()
            && !len.is_multiple_of(64)
            && last >> (len % 64) != 0
        {
            let position =
                (set.words.len() as u64 - 1) * 64 + 64 - u64::from(last.leading_zeros()) - 1;
            return Err(PositionsError::OutOfRange { position, len });
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_ascending_and_counts() {
        for len in [0u64, 1, 7, 8, 9, 63, 64, 65, 200] {
            let want: Vec<u64> = (0..len).filter(|j| j % 3 == 0 || j % 7 == 5).collect();
            let set = Positions::from_ascending(len, &want).unwrap();
            assert_eq!(set.iter().collect::<Vec<_>>(), want);
            assert_eq!(set.count(), want.len() as u64);
            assert_eq!(set.list_len(), len);
            for j in 0..len + 3 {
                assert_eq!(set.contains(j), want.contains(&j));
            }
            // The wire form: one bit a row, whatever the count.
            let bytes = set.to_bytes();
            assert_eq!(bytes.len() as u64, len.div_ceil(8));
            assert_eq!(Positions::from_bytes(&bytes, len).unwrap(), set);
            let full = Positions::from_ascending(len, &(0..len).collect::<Vec<_>>()).unwrap();
            assert_eq!(full.to_bytes().len(), bytes.len());
        }
    }

    #[test]
    fn wire_form_is_least_significant_bit_first() {
        let set = Positions::from_ascending(12, &[0, 3, 9]).unwrap();
        assert_eq!(set.to_bytes(), vec![0b0000_1001, 0b0000_0010]);
    }

    #[test]
    fn parsing_is_strict() {
        // Exactly ⌈len/8⌉ bytes.
        for (bytes, len) in [(0usize, 1u64), (2, 8), (1, 9), (1, 0), (12, 100), (14, 100)] {
            assert_eq!(
                Positions::from_bytes(&vec![0; bytes], len),
                Err(PositionsError::BitmapLength { bytes, len })
            );
        }
        // No bit past the list's end, in the last byte or the last word.
        assert_eq!(
            Positions::from_bytes(&[0b1000_0000], 7),
            Err(PositionsError::OutOfRange {
                position: 7,
                len: 7
            })
        );
        let mut b = vec![0u8; 9];
        b[8] = 0b0000_0100;
        assert_eq!(
            Positions::from_bytes(&b, 66),
            Err(PositionsError::OutOfRange {
                position: 66,
                len: 66
            })
        );
        b[8] = 0b0000_0010;
        assert_eq!(
            Positions::from_bytes(&b, 66)
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            vec![65]
        );
        assert_eq!(Positions::from_bytes(&[], 0).unwrap().count(), 0);
    }

    #[test]
    fn building_checks_range_and_order() {
        assert_eq!(
            Positions::from_ascending(3, &[3]),
            Err(PositionsError::OutOfRange {
                position: 3,
                len: 3
            })
        );
        assert_eq!(
            Positions::from_ascending(3, &[1, 1]),
            Err(PositionsError::NotAscending(1))
        );
        assert_eq!(
            Positions::from_ascending(3, &[2, 1]),
            Err(PositionsError::NotAscending(1))
        );
        // No set over a list longer than any list may be (whatever a peer
        // announces, nothing is allocated for it).
        let too_long = MAX_LIST_ROWS + 1;
        assert_eq!(
            Positions::new(too_long),
            Err(PositionsError::ListTooLong(too_long))
        );
        assert_eq!(
            Positions::new(u64::MAX),
            Err(PositionsError::ListTooLong(u64::MAX))
        );
        let bytes = vec![0u8; too_long.div_ceil(8) as usize];
        assert_eq!(
            Positions::from_bytes(&bytes, too_long),
            Err(PositionsError::ListTooLong(too_long))
        );
        assert_eq!(
            Positions::new(MAX_LIST_ROWS).unwrap().list_len(),
            MAX_LIST_ROWS
        );
        let mut set = Positions::new(5).unwrap();
        assert_eq!(set.insert(4), Ok(true));
        assert_eq!(set.insert(4), Ok(false));
        assert!(set.insert(5).is_err());
    }
}
