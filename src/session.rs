//! Session identifiers and the randomness source for secrets.

use std::fmt;

use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::{CryptoRng, Rng};

/// Length in bytes of a session id.
pub const SID_LEN: usize = 32;

/// A random 32-byte session id. Every protocol message is bound to it; a node
/// serves a given id at most once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; SID_LEN]);

/// The operating system's CSPRNG, as an infallible [`CryptoRng`]. All secret
/// scalars, shuffles and seeds of a run come from here.
pub fn os_rng() -> UnwrapErr<SysRng> {
    UnwrapErr(SysRng)
}

impl SessionId {
    /// A fresh random session id.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; SID_LEN];
        rng.fill_bytes(&mut b);
        SessionId(b)
    }

    /// Parses a session id from bytes that crossed the wire (exactly 32 bytes).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; SID_LEN]>::try_from(bytes).ok().map(SessionId)
    }

    /// Parses the lowercase hex form produced by [`SessionId::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        hex::decode(s.trim())
            .ok()
            .and_then(|b| Self::from_slice(&b))
    }

    /// Lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; SID_LEN] {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.to_hex())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Writes `len(part) as u32 BE || part` into `out`: the unambiguous framing
/// used wherever several variable-length strings are hashed or fed to a KDF.
pub(crate) fn put_lp(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// Uniform `u64` below `bound` (> 0), without modulo bias: draws are
/// rejected above the largest multiple of `bound` that fits in 64 bits, so
/// every residue is equally likely (expected draws < 2).
pub(crate) fn uniform_below<R: Rng + ?Sized>(rng: &mut R, bound: u64) -> u64 {
    assert!(bound > 0, "uniform_below needs a positive bound");
    // 2^64 mod bound, computed without overflow; values below it are the
    // incomplete last block when counting down from 2^64 - 1.
    let reject_below = bound.wrapping_neg() % bound;
    loop {
        let x = rng.next_u64();
        if x >= reject_below {
            return x % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generator that replays fixed outputs, to pin the rejection rule.
    struct Replay(Vec<u64>);
    impl rand::TryRng for Replay {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(self.0.remove(0) as u32)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(self.0.remove(0))
        }
        fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), Self::Error> {
            unimplemented!()
        }
    }

    #[test]
    fn uniform_below_rejects_the_biased_block() {
        // bound 3: 2^64 mod 3 = 1, so 0 is rejected and 1 gives 1 % 3.
        let mut r = Replay(vec![0, 1]);
        assert_eq!(uniform_below(&mut r, 3), 1);
        // u64::MAX is in the last complete block: accepted.
        let mut r = Replay(vec![u64::MAX]);
        assert_eq!(uniform_below(&mut r, 3), u64::MAX % 3);
        // A power of two never rejects.
        let mut r = Replay(vec![0]);
        assert_eq!(uniform_below(&mut r, 8), 0);
        // Every residue of a small bound appears.
        let mut rng = os_rng();
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[uniform_below(&mut rng, 7) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
