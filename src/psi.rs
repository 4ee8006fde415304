//! Private set intersection primitives on the Ristretto group.
//!
//! A party hashes each encoded key to a point, `H(sid || key)` (SHA-512,
//! domain separated), and multiplies it by its fresh session scalar `k`.
//! Other parties multiply the same list by their own scalars, so after all
//! passes every list holds `H(key) * k_1 * ... * k_n` and equal keys meet.
//!
//! Points travel compressed (32 bytes) in flat byte buffers. Compression is
//! the expensive part after the scalar multiplication, so we store `k / 2` and
//! use [`RistrettoPoint::double_and_compress_batch`], which computes
//! `compress(2 P)` for a whole batch with one shared inversion. Work is split
//! in chunks of [`CHUNK`] points over all cores with rayon; callers may also
//! stream their own chunks through the same functions.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::CryptoRng;
use rayon::prelude::*;
use sha2::{Digest, Sha512};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::session::SessionId;

/// Length of a compressed Ristretto point.
pub const POINT_LEN: usize = 32;
/// Length of a truncated final point. A canonical Ristretto encoding is a
/// non-negative field element, so the lowest bit of its first byte is always
/// zero: 16 bytes carry 127 bits. Between two lists of `a` and `b` keys the
/// chance of a false match is at most `a·b / 2^127` (below 2^-87 for a
/// million keys each, below 2^-74 for 10^8 each).
pub const TRUNCATED_LEN: usize = 16;
/// Points per parallel work unit (one batch inversion each).
pub const CHUNK: usize = 512;

const HASH_DOMAIN: &[u8] = b"cleanroom/psi/hash-to-ristretto/v1";

/// Errors from the PSI primitives. Everything here concerns bytes that crossed
/// the wire, so a failure means a faulty or malicious peer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PsiError {
    /// The buffer is not a whole number of compressed points.
    #[error("point buffer of {len} bytes is not a multiple of {POINT_LEN}")]
    RaggedBuffer {
        /// Length received.
        len: usize,
    },
    /// A 32-byte string is not the canonical encoding of a Ristretto point,
    /// or encodes the identity.
    #[error("element {index} is not a canonical Ristretto point encoding, or is the identity")]
    InvalidPoint {
        /// Position in the list.
        index: usize,
    },
    /// Requested output length is neither a full nor a truncated point.
    #[error("unsupported output point length {0}")]
    BadOutputLength(usize),
}

/// Hash-to-group for one session: `H(domain || sid || key)` with SHA-512 and
/// the Ristretto one-way map. The prefix state is computed once and cloned per
/// key, so hashing does not allocate.
#[derive(Clone)]
pub struct HashToGroup {
    prefix: Sha512,
}

impl HashToGroup {
    /// The hash for session `sid`.
    pub fn new(sid: &SessionId) -> Self {
        let mut prefix = Sha512::new();
        prefix.update(HASH_DOMAIN);
        prefix.update(sid.as_bytes());
        HashToGroup { prefix }
    }

    /// Hashes one canonically encoded key to a point.
    pub fn hash(&self, key: &[u8]) -> RistrettoPoint {
        let mut h = self.prefix.clone();
        h.update(key);
        RistrettoPoint::from_hash(h)
    }
}

/// A party's secret blinding scalar for one session. Stored as `k / 2` for the
/// double-and-compress trick; zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BlindingKey {
    half: Scalar,
}

impl std::fmt::Debug for BlindingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindingKey(<secret>)")
    }
}

impl BlindingKey {
    /// A fresh uniformly random non-zero scalar.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        loop {
            let k = Scalar::random(rng);
            if k != Scalar::ZERO {
                return BlindingKey {
                    half: k * Scalar::from(2u8).invert(),
                };
            }
        }
    }

    /// Hashes and blinds a list of encoded keys: returns the flat buffer of
    /// `compress(H(sid || key) * k)`, in input order.
    pub fn blind_keys<K: AsRef<[u8]> + Sync>(&self, h: &HashToGroup, keys: &[K]) -> Vec<u8> {
        let mut out = vec![0u8; keys.len() * POINT_LEN];
        out.par_chunks_mut(CHUNK * POINT_LEN)
            .zip(keys.par_chunks(CHUNK))
            .for_each(|(out, keys)| {
                let pts: Vec<RistrettoPoint> = keys
                    .iter()
                    .map(|k| h.hash(k.as_ref()) * self.half)
                    .collect();
                write_compressed(&pts, out, POINT_LEN);
            });
        out
    }

    /// Re-blinds another party's list: decompresses each point, multiplies it
    /// by `k`, and writes it back compressed, truncated to `out_len` bytes
    /// ([`POINT_LEN`], or [`TRUNCATED_LEN`] on the final pass). Any invalid
    /// encoding rejects the whole buffer.
    pub fn reblind(&self, points: &[u8], out_len: usize) -> Result<Vec<u8>, PsiError> {
        if out_len != POINT_LEN && out_len != TRUNCATED_LEN {
            return Err(PsiError::BadOutputLength(out_len));
        }
        if !points.len().is_multiple_of(POINT_LEN) {
            return Err(PsiError::RaggedBuffer { len: points.len() });
        }
        let n = points.len() / POINT_LEN;
        let mut out = vec![0u8; n * out_len];
        // The first invalid point of the buffer is named, whichever worker
        // finds one first.
        let first_bad = out
            .par_chunks_mut(CHUNK * out_len)
            .zip(points.par_chunks(CHUNK * POINT_LEN))
            .enumerate()
            .filter_map(|(c, (out, inp))| {
                let pts = inp
                    .chunks_exact(POINT_LEN)
                    .enumerate()
                    .map(|(i, b)| decompress(b).map(|p| p * self.half).ok_or(c * CHUNK + i))
                    .collect::<Result<Vec<_>, usize>>();
                match pts {
                    Ok(pts) => {
                        write_compressed(&pts, out, out_len);
                        None
                    }
                    Err(index) => Some(index),
                }
            })
            .min();
        match first_bad {
            Some(index) => Err(PsiError::InvalidPoint { index }),
            None => Ok(out),
        }
    }
}

/// A canonical encoding of a point other than the identity (whose
/// encoding is all zeros; a blinded key is never the identity).
fn decompress(b: &[u8]) -> Option<RistrettoPoint> {
    if b.iter().all(|&x| x == 0) {
        return None;
    }
    CompressedRistretto::from_slice(b).ok()?.decompress()
}

/// `compress(2 P)` for each point, truncated to `len` bytes, into `out`.
fn write_compressed(pts: &[RistrettoPoint], out: &mut [u8], len: usize) {
    let compressed = RistrettoPoint::double_and_compress_batch(pts);
    for (dst, c) in out.chunks_exact_mut(len).zip(compressed.iter()) {
        dst.copy_from_slice(&c.as_bytes()[..len]);
    }
}

/// Truncates a flat buffer of full points to [`TRUNCATED_LEN`] bytes each.
pub fn truncate(points: &[u8]) -> Result<Vec<u8>, PsiError> {
    if !points.len().is_multiple_of(POINT_LEN) {
        return Err(PsiError::RaggedBuffer { len: points.len() });
    }
    Ok(points
        .chunks_exact(POINT_LEN)
        .flat_map(|p| &p[..TRUNCATED_LEN])
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::os_rng;

    #[test]
    fn blinding_commutes() {
        let mut rng = os_rng();
        let sid = SessionId::random(&mut rng);
        let h = HashToGroup::new(&sid);
        let (a, b) = (BlindingKey::random(&mut rng), BlindingKey::random(&mut rng));
        let keys: Vec<Vec<u8>> = (0..1500u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let ab = b.reblind(&a.blind_keys(&h, &keys), POINT_LEN).unwrap();
        let ba = a.reblind(&b.blind_keys(&h, &keys), TRUNCATED_LEN).unwrap();
        assert_eq!(truncate(&ab).unwrap(), ba);
        // Different sessions give unlinkable points for the same key.
        let h2 = HashToGroup::new(&SessionId::random(&mut rng));
        assert_ne!(a.blind_keys(&h, &keys[..1]), a.blind_keys(&h2, &keys[..1]));
    }

    #[test]
    fn malformed_points_are_rejected() {
        let mut rng = os_rng();
        let k = BlindingKey::random(&mut rng);
        let h = HashToGroup::new(&SessionId::random(&mut rng));
        let mut pts = k.blind_keys(&h, &[b"a", b"b", b"c"]);
        assert_eq!(
            k.reblind(&pts[..40], POINT_LEN),
            Err(PsiError::RaggedBuffer { len: 40 })
        );
        pts[32..64].fill(0xFF); // not canonical
        assert_eq!(
            k.reblind(&pts, POINT_LEN),
            Err(PsiError::InvalidPoint { index: 1 })
        );
        assert_eq!(k.reblind(&[], 7), Err(PsiError::BadOutputLength(7)));
    }
}
