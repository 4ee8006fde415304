//! Additive masking of feature values, keyed by pairwise seeds.
//!
//! Node `i` masks its feature vectors with a PRG keyed by a seed it shares
//! with its unmasker `u(i)`: `y_j = f_j + PRG(s, j) mod 2^64`. The coordinator
//! sums the masked rows it matched; `u(i)` sums the masks of the same
//! positions; the recipient subtracts one from the other.
//!
//! Seeds come from long-term Ristretto identity keys (pinned in each node's
//! config): `s = HKDF-SHA256(salt = sid, ikm = DH(sk_i, pk_u), info = purpose
//! || analysis hash || party names)`. The same DH secret also keys the AEAD
//! that seals a mask sum for the recipient (see [`SealKey`]), so the
//! coordinator relays mask sums without being able to read them.

use chacha20::ChaCha20Rng;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, Rng, SeedableRng};
use sha2::Sha256;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::positions::Positions;
use crate::session::{SessionId, put_lp};

/// Errors from key handling, seed derivation and sealing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShareError {
    /// A public key is not a valid Ristretto point (or is the identity).
    #[error("invalid identity public key")]
    InvalidPublicKey,
    /// A secret key file does not hold a canonical scalar.
    #[error("invalid identity secret key")]
    InvalidSecretKey,
    /// A sealed mask sum failed authentication or has the wrong size.
    #[error("sealed message (mask sum or group key) failed to open (tampered, or wrong keys)")]
    OpenFailed,
    /// Vectors that must have equal length do not.
    #[error("length mismatch: expected {expected}, got {got}")]
    LengthMismatch {
        /// Expected length.
        expected: usize,
        /// Received length.
        got: usize,
    },
}

/// A node's long-term identity secret (a Ristretto scalar). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct IdentityKey(Scalar);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(<secret>)")
    }
}

/// A node's long-term public identity (a compressed Ristretto point).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IdentityPublic(pub [u8; 32]);

impl IdentityKey {
    /// A fresh random identity key.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        IdentityKey(Scalar::random(rng))
    }

    /// Parses 32 canonical scalar bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, ShareError> {
        Option::from(Scalar::from_canonical_bytes(bytes))
            .filter(|s: &Scalar| *s != Scalar::ZERO)
            .map(IdentityKey)
            .ok_or(ShareError::InvalidSecretKey)
    }

    /// Parses the hex form written by [`IdentityKey::to_hex`].
    pub fn from_hex(s: &str) -> Result<Self, ShareError> {
        let mut bytes: [u8; 32] = hex::decode(s.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(ShareError::InvalidSecretKey)?;
        let key = Self::from_bytes(bytes);
        bytes.zeroize();
        key
    }

    /// Hex encoding of the secret (for the key file only; never log it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// The public half.
    pub fn public(&self) -> IdentityPublic {
        IdentityPublic(RistrettoPoint::mul_base(&self.0).compress().to_bytes())
    }
}

impl IdentityPublic {
    /// Parses a hex public key, checking it is a valid non-identity point.
    pub fn from_hex(s: &str) -> Result<Self, ShareError> {
        let b: [u8; 32] = hex::decode(s.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(ShareError::InvalidPublicKey)?;
        Self::point(&b)?;
        Ok(IdentityPublic(b))
    }

    /// Hex encoding.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn point(b: &[u8; 32]) -> Result<RistrettoPoint, ShareError> {
        CompressedRistretto(*b)
            .decompress()
            .filter(|p| *p != RistrettoPoint::default())
            .ok_or(ShareError::InvalidPublicKey)
    }
}

/// The DH secret of two identities, bound to one session. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PairwiseSecret {
    prk: [u8; 32],
    #[zeroize(skip)]
    sid: SessionId,
}

impl PairwiseSecret {
    /// `DH(my, peer)` for session `sid`. Symmetric: both sides get the same value.
    pub fn derive(
        my: &IdentityKey,
        peer: &IdentityPublic,
        sid: &SessionId,
    ) -> Result<Self, ShareError> {
        let mut shared = (IdentityPublic::point(&peer.0)? * my.0)
            .compress()
            .to_bytes();
        let mut prk = [0u8; 32];
        Hkdf::<Sha256>::new(Some(sid.as_bytes()), &shared)
            .expand(b"cleanroom/pairwise/v1", &mut prk)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        shared.zeroize();
        Ok(PairwiseSecret { prk, sid: *sid })
    }

    fn expand(&self, purpose: &[u8], analysis_hash: &[u8; 32], names: &[&str]) -> [u8; 32] {
        let mut info = Vec::with_capacity(64);
        put_lp(&mut info, purpose);
        info.extend_from_slice(self.sid.as_bytes());
        info.extend_from_slice(analysis_hash);
        for n in names {
            put_lp(&mut info, n.as_bytes());
        }
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::from_prk(&self.prk)
            .expect("32-byte PRK is valid for HKDF-SHA256")
            .expand(&info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    /// The seed that masks `owner`'s list, shared by `owner` and its unmasker.
    pub fn mask_seed(&self, analysis_hash: &[u8; 32], owner: &str, unmasker: &str) -> MaskSeed {
        MaskSeed(self.expand(b"mask-seed", analysis_hash, &[owner, unmasker]))
    }

    /// The key with which `owner` authenticates its list's length to
    /// `verifier`, a node that re-blinds the list.
    pub fn length_key(&self, analysis_hash: &[u8; 32], owner: &str, verifier: &str) -> LengthKey {
        LengthKey(PairMac(self.expand(
            b"list-length",
            analysis_hash,
            &[owner, verifier],
        )))
    }

    /// The key with which `sender` authenticates the point chunks it sends
    /// `receiver` (its successor in the ring) through the coordinator.
    pub fn chunk_key(&self, analysis_hash: &[u8; 32], sender: &str, receiver: &str) -> ChunkKey {
        ChunkKey(PairMac(self.expand(
            b"hop-chunk",
            analysis_hash,
            &[sender, receiver],
        )))
    }

    /// The AEAD key with which `sender` seals the mask sum of `owner`'s list
    /// for `recipient`.
    pub fn seal_key(
        &self,
        analysis_hash: &[u8; 32],
        owner: &str,
        sender: &str,
        recipient: &str,
    ) -> SealKey {
        SealKey(self.expand(b"seal-key", analysis_hash, &[owner, sender, recipient]))
    }

    /// The AEAD key with which `sender` (the first party in ring order)
    /// seals the keyed-prf group key for `receiver` (see [`crate::prf`]).
    pub fn group_key_wrap(
        &self,
        analysis_hash: &[u8; 32],
        sender: &str,
        receiver: &str,
    ) -> SealKey {
        SealKey(self.expand(b"group-key", analysis_hash, &[sender, receiver]))
    }
}

/// An HMAC-SHA-256 key one node shares with another (derived from their
/// pairwise secret for one purpose and direction). Every message it
/// authenticates starts with a label, the sid, the analysis hash and the
/// list's owner. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct PairMac([u8; 32]);

impl PairMac {
    fn mac(
        &self,
        label: &[u8],
        sid: &SessionId,
        analysis_hash: &[u8; 32],
        owner: u32,
        fields: &[&[u8]],
    ) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        m.update(label);
        m.update(sid.as_bytes());
        m.update(analysis_hash);
        m.update(&owner.to_be_bytes());
        for f in fields {
            m.update(f);
        }
        m
    }

    fn tag(
        &self,
        label: &[u8],
        sid: &SessionId,
        analysis_hash: &[u8; 32],
        owner: u32,
        fields: &[&[u8]],
    ) -> Vec<u8> {
        self.mac(label, sid, analysis_hash, owner, fields)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks a tag in constant time.
    fn verify(
        &self,
        label: &[u8],
        sid: &SessionId,
        analysis_hash: &[u8; 32],
        owner: u32,
        fields: &[&[u8]],
        tag: &[u8],
    ) -> bool {
        self.mac(label, sid, analysis_hash, owner, fields)
            .verify_slice(tag)
            .is_ok()
    }
}

const LENGTH_LABEL: &[u8] = b"cleanroom/list-length/v1";
const CHUNK_LABEL: &[u8] = b"cleanroom/hop-chunk/v1";

/// HMAC-SHA-256 key binding one list's length from its owner to one
/// re-blinding node (see [`PairwiseSecret::length_key`]). Zeroized on drop.
#[derive(Clone)]
pub struct LengthKey(PairMac);

impl LengthKey {
    /// The tag on "list `owner` of session `sid` has `rows` rows".
    pub fn tag(&self, sid: &SessionId, analysis_hash: &[u8; 32], owner: u32, rows: u64) -> Vec<u8> {
        self.0.tag(
            LENGTH_LABEL,
            sid,
            analysis_hash,
            owner,
            &[&rows.to_be_bytes()],
        )
    }

    /// Checks a tag (in constant time).
    pub fn verify(
        &self,
        sid: &SessionId,
        analysis_hash: &[u8; 32],
        owner: u32,
        rows: u64,
        tag: &[u8],
    ) -> bool {
        self.0.verify(
            LENGTH_LABEL,
            sid,
            analysis_hash,
            owner,
            &[&rows.to_be_bytes()],
            tag,
        )
    }
}

/// HMAC-SHA-256 key authenticating the point chunks one node sends the
/// next along the ring (see [`PairwiseSecret::chunk_key`]): the coordinator
/// relays them and can neither alter, replace, reorder nor insert points.
/// Zeroized on drop.
#[derive(Clone)]
pub struct ChunkKey(PairMac);

impl ChunkKey {
    /// The tag on "the points of list `owner` of session `sid` from
    /// position `offset` on are `points`".
    pub fn tag(
        &self,
        sid: &SessionId,
        analysis_hash: &[u8; 32],
        owner: u32,
        offset: u64,
        points: &[u8],
    ) -> Vec<u8> {
        let len = (points.len() as u64).to_be_bytes();
        self.0.tag(
            CHUNK_LABEL,
            sid,
            analysis_hash,
            owner,
            &[&offset.to_be_bytes(), &len, points],
        )
    }

    /// Checks a tag (in constant time).
    pub fn verify(
        &self,
        sid: &SessionId,
        analysis_hash: &[u8; 32],
        owner: u32,
        offset: u64,
        points: &[u8],
        tag: &[u8],
    ) -> bool {
        let len = (points.len() as u64).to_be_bytes();
        self.0.verify(
            CHUNK_LABEL,
            sid,
            analysis_hash,
            owner,
            &[&offset.to_be_bytes(), &len, points],
            tag,
        )
    }
}

/// Seed of the masking PRG for one list in one session. Zeroized on drop.
///
/// The PRG is one ChaCha20 keystream keyed by the seed (stream 0, 64-bit
/// block counter, [`chacha20::ChaCha20Rng`]), read as little-endian `u64`
/// words: the mask of value `f` of row `j` in a list `width` values wide is
/// word `width·j + f`. Every word of every row is a distinct keystream word,
/// so masks are independent and uniform to anyone without the seed; a
/// chunk of consecutive rows is one stretch of keystream (one ChaCha20
/// block per 8 words), and any row is reached directly by seeking.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MaskSeed([u8; 32]);

/// Words skipped by reading rather than by seeking (a seek regenerates the
/// PRG's 4-block buffer).
const SKIP_BY_READING: u64 = 32;

/// Mask words drawn from the keystream at once (masking rows, summing
/// masks).
const MASK_BATCH: usize = 64;

impl MaskSeed {
    /// A seed from raw bytes (tests and simulations).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        MaskSeed(b)
    }

    /// The PRG at the first word of row `position` (zeroized on drop).
    fn prg_at(&self, position: u64, width: usize) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::from_seed(self.0);
        rng.set_word_pos(2 * u128::from(position) * width as u128);
        rng
    }

    /// Masks a flat feature matrix (`width` values per row, row `j` at
    /// position `j`) in place: `y = f + mask mod 2^64`.
    pub fn mask_rows(&self, values: &mut [u64], width: usize) {
        self.mask_rows_from(values, width, 0);
    }

    /// [`MaskSeed::mask_rows`] for a chunk whose first row is at position
    /// `first` of the list: one stretch of keystream.
    pub fn mask_rows_from(&self, values: &mut [u64], width: usize, first: u64) {
        if width == 0 || values.is_empty() {
            return;
        }
        let mut rng = self.prg_at(first, width);
        // The keystream a batch of words at a time (the same words as one
        // `next_u64` each: little-endian, in order), wiped afterwards.
        let mut buf = [0u8; 8 * MASK_BATCH];
        for batch in values.chunks_mut(MASK_BATCH) {
            let bytes = &mut buf[..8 * batch.len()];
            rng.fill_bytes(bytes);
            for (v, m) in batch.iter_mut().zip(bytes.as_chunks::<8>().0) {
                *v = v.wrapping_add(u64::from_le_bytes(*m));
            }
        }
        buf.zeroize();
    }

    /// Sum of the masks of the rows in `positions`, mod 2^64. Reads the
    /// keystream forward, seeking only over gaps.
    pub fn mask_sum(&self, positions: &Positions, width: usize) -> Vec<u64> {
        let mut sum = vec![0u64; width];
        let mut rows = positions.iter().peekable();
        let Some(&start) = rows.peek() else {
            return sum;
        };
        if width == 0 {
            return sum;
        }
        // Positions are taken in runs that fit one read of the keystream
        // (MASK_BATCH words, or one row if rows are wider): each run's
        // words are read at once, the PRG reading forward over short gaps
        // between runs and seeking over longer ones.
        // Word offsets in u128: positions are below the list's length,
        // whatever it is.
        let w = width as u128;
        let span = (MASK_BATCH / width).max(1) as u64;
        let mut buf = vec![0u8; 8 * MASK_BATCH.max(width)];
        let mut rng = self.prg_at(start, width);
        // The word the PRG reads next.
        let mut next = u128::from(start) * w;
        let mut run = Vec::with_capacity(span as usize);
        while let Some(first) = rows.next() {
            let end = first.saturating_add(span);
            run.clear();
            run.push(first);
            while let Some(p) = rows.next_if(|&p| p < end) {
                run.push(p);
            }
            let last = run[run.len() - 1];
            let gap = u128::from(first) * w - next;
            if gap > u128::from(SKIP_BY_READING) {
                rng = self.prg_at(first, width);
            } else {
                rng.fill_bytes(&mut buf[..8 * gap as usize]);
            }
            let words = (last - first + 1) as usize * width;
            rng.fill_bytes(&mut buf[..8 * words]);
            let (stream, _) = buf.as_chunks::<8>();
            for &p in &run {
                let at = (p - first) as usize * width;
                for (s, m) in sum.iter_mut().zip(&stream[at..at + width]) {
                    *s = s.wrapping_add(u64::from_le_bytes(*m));
                }
            }
            next = (u128::from(last) + 1) * w;
        }
        buf.zeroize();
        sum
    }
}

/// `acc += v` component-wise, mod 2^64.
pub fn add_assign(acc: &mut [u64], v: &[u64]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*b);
    }
}

/// `masked - mask` component-wise, mod 2^64.
pub fn unmask(masked: &[u64], mask: &[u64]) -> Result<Vec<u64>, ShareError> {
    if masked.len() != mask.len() {
        return Err(ShareError::LengthMismatch {
            expected: masked.len(),
            got: mask.len(),
        });
    }
    Ok(masked
        .iter()
        .zip(mask)
        .map(|(y, m)| y.wrapping_sub(*m))
        .collect())
}

/// AEAD key (ChaCha20-Poly1305) sealing one message between two nodes
/// through the coordinator: a mask sum from its computing node to the
/// recipient ([`PairwiseSecret::seal_key`]), or the keyed-prf group key from
/// the first party to another ([`PairwiseSecret::group_key_wrap`]). Each key
/// is derived for one session, purpose and pair, and used for exactly one
/// message, so the nonce is fixed. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SealKey([u8; 32]);

/// Bytes a [`SealKey`] box adds to what it seals: the Poly1305 tag.
pub const SEAL_TAG_LEN: usize = 16;

/// Bytes of a vector of `width` words sealed with [`SealKey::seal`]: eight
/// a word and the Poly1305 tag.
pub const fn sealed_len(width: usize) -> usize {
    8 * width + SEAL_TAG_LEN
}

impl SealKey {
    /// Seals a vector of `u64` (big-endian), with `aad` bound in
    /// ([`sealed_len`] bytes).
    pub fn seal(&self, values: &[u64], aad: &[u8]) -> Vec<u8> {
        let mut msg: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        let sealed = self.seal_bytes(&msg, aad);
        msg.zeroize();
        sealed
    }

    /// Opens a sealed vector of exactly `width` values.
    pub fn open(&self, sealed: &[u8], aad: &[u8], width: usize) -> Result<Vec<u64>, ShareError> {
        let msg = self.open_bytes(sealed, aad, width * 8)?;
        Ok(msg
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("chunk of 8")))
            .collect())
    }

    /// Seals bytes, with `aad` bound in: `msg.len() + SEAL_TAG_LEN` bytes.
    pub fn seal_bytes(&self, msg: &[u8], aad: &[u8]) -> Vec<u8> {
        self.cipher()
            .encrypt(&Nonce::default(), Payload { msg, aad })
            .expect("ChaCha20-Poly1305 accepts messages of this size")
    }

    /// Opens sealed bytes whose plaintext must be exactly `len` bytes
    /// (zeroized when the caller drops them).
    pub fn open_bytes(
        &self,
        sealed: &[u8],
        aad: &[u8],
        len: usize,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ShareError> {
        let msg = zeroize::Zeroizing::new(
            self.cipher()
                .decrypt(&Nonce::default(), Payload { msg: sealed, aad })
                .map_err(|_| ShareError::OpenFailed)?,
        );
        if msg.len() != len {
            return Err(ShareError::OpenFailed);
        }
        Ok(msg)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::os_rng;

    #[test]
    fn masks_cancel() {
        let mut rng = os_rng();
        let sid = SessionId::random(&mut rng);
        let (a, b) = (IdentityKey::random(&mut rng), IdentityKey::random(&mut rng));
        let h = [7u8; 32];
        let sa = PairwiseSecret::derive(&a, &b.public(), &sid)
            .unwrap()
            .mask_seed(&h, "a", "b");
        let sb = PairwiseSecret::derive(&b, &a.public(), &sid)
            .unwrap()
            .mask_seed(&h, "a", "b");
        let width = 3;
        let plain: Vec<u64> = (0..30).map(|i| i * 1000 + u64::MAX / 3).collect();
        let mut masked = plain.clone();
        sa.mask_rows(&mut masked, width);
        assert_ne!(masked, plain);
        let positions = [1u64, 4, 9];
        let mut ysum = vec![0u64; width];
        let mut want = vec![0u64; width];
        for &p in &positions {
            let r = p as usize * width..(p as usize + 1) * width;
            add_assign(&mut ysum, &masked[r.clone()]);
            add_assign(&mut want, &plain[r]);
        }
        let chosen = set(10, &positions);
        let m = sb.mask_sum(&chosen, width);
        assert_eq!(unmask(&ysum, &m).unwrap(), want);
        // The seed depends on the direction.
        let other = PairwiseSecret::derive(&b, &a.public(), &sid)
            .unwrap()
            .mask_seed(&h, "b", "a");
        assert_ne!(other.mask_sum(&chosen, width), m);
    }

    /// The set of ascending `positions` of a list of `len` rows.
    fn set(len: u64, positions: &[u64]) -> Positions {
        Positions::from_ascending(len, positions).unwrap()
    }

    /// The sum of the rows at `positions` of a flat `width`-wide matrix.
    fn rows_sum(rows: &[u64], width: usize, positions: &[u64]) -> Vec<u64> {
        let mut sum = vec![0u64; width];
        for &p in positions {
            let at = p as usize * width;
            add_assign(&mut sum, &rows[at..at + width]);
        }
        sum
    }

    #[test]
    fn masks_are_one_keystream_read_in_any_order() {
        let s = MaskSeed::from_bytes([5; 32]);
        for width in [1usize, 2, 3, 7, 40] {
            let rows = 300u64;
            let mut whole = vec![0u64; rows as usize * width];
            s.mask_rows(&mut whole, width);
            // Chunk by chunk, and row by row, give the same masks.
            for first in [0u64, 1, 17, 299] {
                let mut part = vec![0u64; (rows - first).min(9) as usize * width];
                s.mask_rows_from(&mut part, width, first);
                let at = first as usize * width;
                assert_eq!(part, whole[at..at + part.len()]);
                let mut one = vec![0u64; width];
                s.mask_rows_from(&mut one, width, first);
                assert_eq!(one, whole[at..at + width]);
            }
            // Sums over dense, sparse and mixed positions (reading forward
            // and seeking) equal the sums of the rows.
            let sets: [Vec<u64>; 6] = [
                (0..rows).collect(),
                (0..rows).step_by(97).collect(),
                vec![0, 1, 2, 40, 41, 200, 299],
                vec![298],
                // Gaps of a few words: skipped by reading.
                vec![3, 5, 20, 21, 50],
                (0..rows).step_by(3).collect(),
            ];
            for ps in sets {
                let want = rows_sum(&whole, width, &ps);
                assert_eq!(s.mask_sum(&set(rows, &ps), width), want, "{width} {ps:?}");
            }
            // Distinct rows and values get distinct words.
            let mut sorted = whole.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), whole.len());
        }
        assert_eq!(s.mask_sum(&set(5, &[]), 2), vec![0, 0]);
        assert_eq!(s.mask_sum(&set(5, &[1]), 0), Vec::<u64>::new());
    }

    #[test]
    fn batched_masks_and_sums_equal_the_keystream_word_by_word() {
        // Against the generator read one word at a time (independent of
        // the batching): row j, value f is word w·j + f.
        let s = MaskSeed::from_bytes([11; 32]);
        let words = |first: u64, count: usize, width: usize| -> Vec<u64> {
            let mut rng = ChaCha20Rng::from_seed([11; 32]);
            rng.set_word_pos(2 * u128::from(first) * width as u128);
            (0..count).map(|_| rng.next_u64()).collect()
        };
        for width in [1usize, 3, 64, 65, 130] {
            for first in [0u64, 1, 5, 17] {
                let mut m = vec![0u64; 3 * MASK_BATCH + width];
                s.mask_rows_from(&mut m, width, first);
                assert_eq!(m, words(first, m.len(), width), "{width} {first}");
            }
            let rows = 400u64;
            let all = words(0, rows as usize * width, width);
            let sets: [Vec<u64>; 5] = [
                (0..rows).collect(),
                (0..rows).step_by(2).collect(),
                // Width 1: a gap of 32 words between runs (read), then 33
                // (seek).
                vec![0, 33, 66],
                vec![0, 33, 67],
                vec![1, 63, 64, 200, 399],
            ];
            for ps in sets {
                let want = rows_sum(&all, width, &ps);
                assert_eq!(s.mask_sum(&set(rows, &ps), width), want, "{width} {ps:?}");
            }
        }
        // The last rows of the longest list a node accepts, wide rows (word
        // offsets past 2^32).
        let len = crate::protocol::MAX_LIST_ROWS;
        let (last, width) = (len - 1, 130);
        let m = s.mask_sum(&set(len, &[last - 1, last]), width);
        let w = words(last - 1, 2 * width, width);
        let want: Vec<u64> = (0..width)
            .map(|f| w[f].wrapping_add(w[width + f]))
            .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn masks_are_the_chacha20_keystream() {
        // RFC 8439, A.1, test vectors 1 and 2 (all-zero key and nonce,
        // blocks 0 and 1): the keystream as little-endian 64-bit words.
        let word = |h: &str| u64::from_le_bytes(hex::decode(h).unwrap().try_into().unwrap());
        let s = MaskSeed::from_bytes([0; 32]);
        let mut m = vec![0u64; 9];
        s.mask_rows(&mut m, 1);
        assert_eq!(m[0], word("76b8e0ada0f13d90"));
        assert_eq!(m[1], word("405d6ae55386bd28"));
        assert_eq!(m[8], word("9f07e7be5551387a"));
        // Row 4 of a 2-wide list is words 8 and 9.
        let mut row = vec![0u64; 2];
        s.mask_rows_from(&mut row, 2, 4);
        assert_eq!(row[0], m[8]);
        assert_eq!(s.mask_sum(&set(5, &[4]), 2), row);
    }

    #[test]
    fn sealing_round_trips_and_detects_tampering() {
        let k = SealKey([3; 32]);
        let mut c = k.seal(&[1, 2, u64::MAX], b"aad");
        assert_eq!(k.open(&c, b"aad", 3).unwrap(), vec![1, 2, u64::MAX]);
        assert_eq!(k.open(&c, b"other", 3), Err(ShareError::OpenFailed));
        c[0] ^= 1;
        assert_eq!(k.open(&c, b"aad", 3), Err(ShareError::OpenFailed));
    }

    #[test]
    fn keys_parse_strictly() {
        let k = IdentityKey::random(&mut os_rng());
        let back = IdentityKey::from_hex(&k.to_hex()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(
            IdentityPublic::from_hex(&k.public().to_hex()).unwrap(),
            k.public()
        );
        assert_eq!(
            IdentityPublic::from_hex("00"),
            Err(ShareError::InvalidPublicKey)
        );
        assert_eq!(
            IdentityPublic::from_hex(&hex::encode([0u8; 32])),
            Err(ShareError::InvalidPublicKey)
        );
        assert!(matches!(
            IdentityKey::from_hex(&"ff".repeat(32)),
            Err(ShareError::InvalidSecretKey)
        ));
    }
}
