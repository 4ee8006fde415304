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

/// Uniform `u64` below `bound` (> 0), without modulo bias.
pub(crate) fn uniform_below<R: Rng + ?Sized>(rng: &mut R, bound: u64) -> u64 {
    use rand::RngExt;
    rng.random_range(0..bound)
}
