//! Step 2, the local step, streaming: rows arrive in batches (as the query
//! engine produces them), are checked, clamped and blinded batch by batch on
//! all cores, and kept compactly (32-byte points, raw features); the list is
//! then padded, shuffled and masked position by position as it is sent out,
//! in chunks. Nothing is allocated per row.
//!
//! Keys become elements by the session's protocol ([`super::encode`]):
//! 32-byte points under ecdh-ring, 16-byte tags under keyed-prf.
//!
//! Memory per key of the node's own list: `e·copies` bytes of elements (`e`
//! the element length), `8·w`
//! bytes of features and 4 bytes of permutation (`copies` is the number of
//! groups for a non-grouping party of a grouped analysis, else 1); while
//! the duplicate check runs, 8 bytes more (a fingerprint of each element,
//! see [`super::repeats`]), or 16 (references for the exact check) if two
//! fingerprints are equal.

use chacha20::ChaCha20Rng;
use rand::seq::SliceRandom;
use rand::{CryptoRng, Rng, SeedableRng};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::{Layout, MAX_LIST_ROWS, NodeSession, PreparedList, ProtocolError, Row};
use crate::keys::{TAG_DUMMY, append_group};
use crate::share::MaskSeed;

/// Dummy keys blinded per parallel job (see [`ListBuilder::finish`]).
const DUMMY_SLICE: usize = 8192;

/// A batch of a party's local rows in flat buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowBatch {
    /// Canonical key encodings (see [`crate::keys`]), concatenated.
    pub keys: Vec<u8>,
    /// End offset in `keys` of each row's key.
    pub ends: Vec<usize>,
    /// Features, [`crate::analysis::Analysis::features`] order, `w` per row.
    pub features: Vec<u64>,
    /// The group of each row (grouping party of a grouped analysis only).
    pub groups: Option<Vec<u32>>,
}

impl RowBatch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The key of row `r`.
    pub fn key(&self, r: usize) -> &[u8] {
        let start = if r == 0 { 0 } else { self.ends[r - 1] };
        &self.keys[start..self.ends[r]]
    }

    /// Appends one row.
    pub fn push(&mut self, key: &[u8], features: &[u64], group: Option<u32>) {
        self.keys.extend_from_slice(key);
        self.ends.push(self.keys.len());
        self.features.extend_from_slice(features);
        if let Some(g) = group {
            self.groups.get_or_insert_with(Vec::new).push(g);
        }
    }

    /// The batch of some rows (tests, the in-memory run).
    pub fn from_rows(rows: &[Row]) -> Self {
        let mut b = RowBatch::default();
        for r in rows {
            b.push(&r.key, &r.features, r.group);
        }
        b
    }
}

/// Collects a node's own list batch by batch (step 2, before shuffling).
pub struct ListBuilder<'s> {
    session: &'s NodeSession,
    party: String,
    columns: Vec<String>,
    bounds: Vec<u64>,
    /// Copies of each key (groups, for a non-grouping party of a grouped
    /// analysis; else 1).
    copies: usize,
    grouping: bool,
    points: Vec<u8>,
    features: Vec<u64>,
    groups: Vec<u32>,
    /// The grouping party's keys are blinded with their group part, so a key
    /// returned in two groups gives two different points: for that party a
    /// 16-byte digest of each untagged key (never sent) finds duplicates.
    key_digests: Vec<[u8; 16]>,
    totals: Vec<u128>,
    keys: usize,
}

impl Drop for ListBuilder<'_> {
    fn drop(&mut self) {
        self.features.zeroize();
        self.key_digests.zeroize();
    }
}

impl std::fmt::Debug for ListBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListBuilder")
            .field("party", &self.party)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl<'s> ListBuilder<'s> {
    pub(super) fn new(session: &'s NodeSession) -> Self {
        let party = session.name(session.me).to_string();
        let columns = session.analysis.features(&party);
        let bounds = columns
            .iter()
            .map(|c| session.analysis.bound(&party, c).unwrap_or(u64::MAX))
            .collect();
        let layout = &session.layout;
        let grouping = layout.count_slot(0).is_some_and(|(p, _)| p == session.me);
        let copies = if layout.is_grouped() && !grouping {
            layout.groups()
        } else {
            1
        };
        ListBuilder {
            session,
            totals: vec![0; columns.len()],
            party,
            columns,
            bounds,
            copies,
            grouping,
            points: Vec::new(),
            features: Vec::new(),
            groups: Vec::new(),
            key_digests: Vec::new(),
            keys: 0,
        }
    }

    /// Keys pushed so far.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Checks, clamps and blinds one batch (on all cores).
    pub fn push(&mut self, batch: &RowBatch) -> Result<(), ProtocolError> {
        let w = self.columns.len();
        let n = batch.len();
        if batch.features.len() != n * w {
            return Err(ProtocolError::WidthMismatch {
                party: self.party.clone(),
                expected: w,
                got: batch.features.len().checked_div(n).unwrap_or(0),
            });
        }
        let bad_group = || ProtocolError::BadGroup {
            party: self.party.clone(),
        };
        let groups = self.session.layout.groups();
        match (&batch.groups, self.grouping) {
            (Some(g), true) if g.len() == n && g.iter().all(|&g| (g as usize) < groups) => {}
            (None, false) => {}
            (None, true) if n == 0 => {}
            _ => return Err(bad_group()),
        }
        let total_keys = (self.keys + n) as u64;
        if total_keys.saturating_mul(self.copies as u64) > MAX_LIST_ROWS {
            return Err(ProtocolError::ListTooLong {
                party: self.party.clone(),
            });
        }
        let start = self.features.len();
        self.features.extend_from_slice(&batch.features);
        for row in self.features[start..].chunks_exact_mut(w.max(1)) {
            for ((f, b), t) in row.iter_mut().zip(&self.bounds).zip(&mut self.totals) {
                *f = (*f).min(*b);
                *t += *f as u128;
            }
        }
        // The keys as blinded: with a group part when grouped (in one flat
        // buffer for the batch).
        let layout = &self.session.layout;
        let mut tagged = Vec::new();
        let mut ends = Vec::new();
        if layout.is_grouped() {
            tagged.reserve(batch.keys.len() * self.copies + n * self.copies * 5);
            for r in 0..n {
                for c in 0..self.copies {
                    let g = batch.groups.as_ref().map_or(c as u32, |gs| gs[r]);
                    tagged.extend_from_slice(batch.key(r));
                    append_group(&mut tagged, g);
                    ends.push(tagged.len());
                }
            }
        }
        let slices: Vec<&[u8]> = if layout.is_grouped() {
            let starts = std::iter::once(0).chain(ends.iter().copied());
            starts.zip(&ends).map(|(a, &b)| &tagged[a..b]).collect()
        } else {
            (0..n).map(|r| batch.key(r)).collect()
        };
        self.session
            .encoder
            .encode_onto(&slices, &mut self.points)?;
        if let Some(g) = &batch.groups {
            self.groups.extend_from_slice(g);
        }
        if self.grouping && layout.is_grouped() {
            self.key_digests.extend((0..n).map(|r| {
                let d = Sha256::digest(batch.key(r));
                let mut out = [0u8; 16];
                out.copy_from_slice(&d[..16]);
                out
            }));
        }
        self.keys += n;
        Ok(())
    }

    /// Ends the list: checks totals and duplicate keys, adds padding and DP
    /// dummy rows, and draws the shuffle.
    pub fn finish<R: CryptoRng + ?Sized>(
        mut self,
        rng: &mut R,
    ) -> Result<ShuffledList, ProtocolError> {
        let party = std::mem::take(&mut self.party);
        if let Some(c) = self.totals.iter().position(|&t| t >= 1u128 << 63) {
            return Err(ProtocolError::SumTooLarge {
                party,
                column: self.columns[c].clone(),
            });
        }
        let el = self.session.encoder.element_len();
        // Equal keys give equal elements (each key's first copy's), except
        // at the grouping party, whose elements carry the group: there the
        // untagged keys' digests.
        let duplicate = if self.key_digests.is_empty() {
            super::repeats::any_repeat(&self.points, self.copies * el, el)
        } else {
            let mut digests = std::mem::take(&mut self.key_digests);
            let repeat = super::repeats::any_repeat(digests.as_flattened(), 16, 16);
            // Unsalted digests of the bank's raw keys: wiped.
            digests.zeroize();
            repeat
        };
        if duplicate {
            return Err(ProtocolError::DuplicateKey { party });
        }
        let analysis = &self.session.analysis;
        let real = (self.keys * self.copies) as u64;
        let padded = match analysis.privacy.pad_to_multiple {
            Some(m) => real.div_ceil(m).max(1) * m,
            None => real,
        };
        let dp_rows = analysis.dp_dummy_rows();
        let total = padded + dp_rows;
        if total > MAX_LIST_ROWS {
            return Err(ProtocolError::ListTooLong { party });
        }
        // Dummy keys: random, with a tag no real key has.
        // The padding's keys and the shuffle come from a ChaCha20 generator
        // seeded here from `rng` (the OS's, in a node): one system call
        // instead of one per row, and zeroized when the list is built.
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut rng = ChaCha20Rng::from_seed(seed);
        seed.zeroize();
        let mut dummy_keys = vec![0u8; ((total - real) * 33) as usize];
        for k in dummy_keys.chunks_exact_mut(33) {
            k[0] = TAG_DUMMY;
            rng.fill_bytes(&mut k[1..]);
        }
        let slices: Vec<&[u8]> = dummy_keys.chunks_exact(33).collect();
        let mut points = std::mem::take(&mut self.points);
        points.reserve_exact(slices.len() * el);
        // In slices, like the query's batches: each is one parallel job, so
        // the node's re-blinding of other lists (also on the rayon pool)
        // gets its turn between them instead of waiting for all padding.
        for part in slices.chunks(DUMMY_SLICE) {
            self.session.encoder.encode_onto(part, &mut points)?;
        }
        let mut perm: Vec<u32> = (0..total as u32).collect();
        perm.shuffle(&mut rng);
        let groups = self.session.layout.groups() as u64;
        let block = dp_rows / groups;
        let mut blocks = vec![Vec::new(); groups as usize];
        for (pos, &src) in perm.iter().enumerate() {
            let src = src as u64;
            if src >= padded {
                blocks[((src - padded) / block) as usize].push(pos as u64);
            }
        }
        Ok(ShuffledList {
            seed: self.session.own_seed.clone(),
            slots: Slots::new(&self.session.layout, self.session.me, self.columns.len()),
            width: self.session.layout.row_width(self.session.me),
            element_len: el,
            w: self.columns.len(),
            copies: self.copies,
            grouping: self.grouping,
            points,
            features: std::mem::take(&mut self.features),
            groups: std::mem::take(&mut self.groups),
            perm,
            real,
            padded,
            block,
            dummies: blocks.concat(),
        })
    }
}

/// Copies the `N`-byte elements at `perm`'s indices of `from`, in order,
/// into `out` (`perm.len() · N` bytes): fixed-size copies, no call per row.
fn gather<const N: usize>(from: &[u8], perm: &[u32], out: &mut [u8]) {
    let (from, _) = from.as_chunks::<N>();
    let (out, _) = out.as_chunks_mut::<N>();
    for (o, &src) in out.iter_mut().zip(perm) {
        *o = from[src as usize];
    }
}

/// Where a row's values go in its masked vector, per group: worked out
/// once per list from the [`Layout`] rather than per row.
#[derive(Debug, Clone)]
struct Slots {
    /// The slot of each feature in each group's block (`w` per group).
    features: Vec<usize>,
    /// Per group: the slot of this party's count indicator, if it has one.
    count: Vec<Option<usize>>,
    /// Per group: the vector of a DP dummy row assigned to it (`width`
    /// words each).
    dummies: Vec<u64>,
}

impl Slots {
    fn new(layout: &Layout, me: usize, w: usize) -> Self {
        let groups = 0..layout.groups();
        Slots {
            features: groups
                .clone()
                .flat_map(|g| (0..w).map(move |f| layout.feature_slot(me, f, g)))
                .collect(),
            count: groups
                .clone()
                .map(|g| {
                    layout
                        .count_slot(g)
                        .and_then(|(p, slot)| (p == me).then_some(slot))
                })
                .collect(),
            dummies: groups.flat_map(|g| layout.dummy_row(me, Some(g))).collect(),
        }
    }
}

/// A node's own list after the shuffle, ready to be sent chunk by chunk.
/// Holds the list's mask seed (zeroized when dropped).
pub struct ShuffledList {
    seed: MaskSeed,
    slots: Slots,
    width: usize,
    element_len: usize,
    w: usize,
    copies: usize,
    grouping: bool,
    points: Vec<u8>,
    features: Vec<u64>,
    groups: Vec<u32>,
    perm: Vec<u32>,
    real: u64,
    padded: u64,
    block: u64,
    dummies: Vec<u64>,
}

impl Drop for ShuffledList {
    fn drop(&mut self) {
        // The bank's clamped plaintext features, and the permutation
        // (with the matched positions, it would say which rows matched).
        self.features.zeroize();
        self.perm.zeroize();
    }
}

impl std::fmt::Debug for ShuffledList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShuffledList")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl ShuffledList {
    /// Rows, padding and dummies included.
    pub fn len(&self) -> u64 {
        self.perm.len() as u64
    }

    /// Whether the list has no rows at all.
    pub fn is_empty(&self) -> bool {
        self.perm.is_empty()
    }

    /// Masked values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Bytes per element (point or tag) of the list.
    pub fn element_len(&self) -> usize {
        self.element_len
    }

    /// Positions of the DP dummy rows, in blocks per group.
    pub fn dummies(&self) -> &[u64] {
        &self.dummies
    }

    /// The elements ([`ShuffledList::element_len`] bytes each) and masked
    /// values (`width` each) of positions `start..start + count` (clipped to
    /// the list).
    pub fn chunk(&self, start: u64, count: usize) -> (Vec<u8>, Vec<u64>) {
        let end = start.saturating_add(count as u64).min(self.len());
        let start = start.min(end);
        let rows = (end - start) as usize;
        let perm = &self.perm[start as usize..end as usize];
        let el = self.element_len;
        let mut points = vec![0u8; rows * el];
        match el {
            16 => gather::<16>(&self.points, perm, &mut points),
            32 => gather::<32>(&self.points, perm, &mut points),
            _ => {
                for (out, &src) in points.chunks_exact_mut(el).zip(perm) {
                    let at = src as usize * el;
                    out.copy_from_slice(&self.points[at..at + el]);
                }
            }
        }
        let mut masked = vec![0u64; rows * self.width];
        if self.width > 0 {
            let w = self.w;
            let (mut features, groups) = self.sources(perm);
            for (i, (row, &src)) in masked.chunks_exact_mut(self.width).zip(perm).enumerate() {
                let group = groups.as_ref().map_or(0, |g| g[i] as usize);
                self.fill(u64::from(src), group, &features[i * w..(i + 1) * w], row);
            }
            // The bank's clamped plaintext features (and the grouping
            // party's groups), in shuffled order.
            features.zeroize();
            if let Some(mut g) = groups {
                g.zeroize();
            }
        }
        self.seed.mask_rows_from(&mut masked, self.width, start);
        (points, masked)
    }

    /// The features (`w` words a row; zero for padding and dummies) of
    /// `perm`'s source rows, and their groups if the list is grouped. The
    /// rows are read in shuffled order, so nearly every read misses the
    /// cache: this loop does nothing else, so that the processor overlaps
    /// the misses of many rows (slotting each row as it is read would
    /// serialize them; measured: the chunk took twice as long).
    fn sources(&self, perm: &[u32]) -> (Vec<u64>, Option<Vec<u32>>) {
        let (w, copies) = (self.w, self.copies);
        let key = |src: u32| {
            if copies == 1 {
                src as usize
            } else {
                src as usize / copies
            }
        };
        let real = |src: u32| u64::from(src) < self.real;
        let mut features = vec![0u64; perm.len() * w];
        if w == 1 {
            for (f, &src) in features.iter_mut().zip(perm) {
                if real(src) {
                    *f = self.features[key(src)];
                }
            }
        } else if w > 1 {
            for (f, &src) in features.chunks_exact_mut(w).zip(perm) {
                if real(src) {
                    let k = key(src);
                    f.copy_from_slice(&self.features[k * w..(k + 1) * w]);
                }
            }
        }
        let groups = (copies > 1 || self.grouping).then(|| {
            perm.iter()
                .map(|&src| match () {
                    _ if !real(src) => 0,
                    _ if self.grouping => self.groups[key(src)],
                    _ => (src as usize % copies) as u32,
                })
                .collect()
        });
        (features, groups)
    }

    /// Writes the plain (slotted) values of source row `src` of `group`,
    /// whose features are `features`, into `row` (zeroed): a real row's
    /// features (and count indicator) in its group's block, a DP dummy's
    /// indicator, nothing for padding.
    fn fill(&self, src: u64, group: usize, features: &[u64], row: &mut [u64]) {
        let w = self.w;
        if src < self.real {
            if let Some(slot) = self.slots.count[group] {
                row[slot] = 1;
            }
            let slots = &self.slots.features[group * w..(group + 1) * w];
            for (&slot, &v) in slots.iter().zip(features) {
                row[slot] = v;
            }
        } else if src >= self.padded {
            let g = ((src - self.padded) / self.block) as usize;
            row.copy_from_slice(&self.slots.dummies[g * self.width..(g + 1) * self.width]);
        }
    }

    /// The whole list at once (the in-memory run and tests).
    pub fn into_prepared(self) -> PreparedList {
        let (points, masked) = self.chunk(0, self.len() as usize);
        PreparedList {
            points,
            masked: super::MaskedList {
                values: masked,
                width: self.width,
                len: self.len(),
                dummies: self.dummies.clone(),
            },
        }
    }
}
