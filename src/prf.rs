//! The keyed-prf matching protocol's primitives: server-aided PSI (Kamara,
//! Mohassel, Raykova and Sadeghian, FC 2014).
//!
//! The banks of a session share a fresh 256-bit [`GroupKey`] that the
//! coordinator never sees: the first party in ring order draws it (OsRng)
//! and seals it for every other party under their pairwise key
//! ([`crate::share::PairwiseSecret::group_key_wrap`], ChaCha20-Poly1305,
//! bound to the sid, the analysis hash and both names); the coordinator
//! relays the boxes. Every party then sends, instead of blinded points, the
//! [`TAG_LEN`]-byte tag of each canonically encoded key:
//!
//! `tag(x) = HMAC-SHA-256(K, "cleanroom/keyed-prf/tag/v1" ‖ sid ‖ x)[..16]`
//!
//! and the coordinator matches tags. To the coordinator, which lacks `K`, a
//! tag is pseudorandom, and tags of one key differ between sessions (the sid
//! is in the input and `K` is fresh). A party that holds `K` can compute
//! the tag of any guessed key, which is why a coordinator colluding with a
//! single bank can test guesses against every bank's list under keyed-prf
//! but not under the ECDH ring (README, leakage table).
//!
//! 16-byte tags: between lists of `a` and `b` keys a false match has
//! probability at most `a·b / 2^128`.

use hmac::{Hmac, KeyInit, Mac};
use rand::CryptoRng;
use rayon::prelude::*;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::session::SessionId;
use crate::share::{SEAL_TAG_LEN, SealKey, ShareError};

/// Length of a group key.
pub const GROUP_KEY_LEN: usize = 32;
/// Length of a tag: the element a keyed-prf list carries per row.
pub const TAG_LEN: usize = 16;
/// Length of a sealed group key (key plus the AEAD's 16-byte tag).
pub const SEALED_GROUP_KEY_LEN: usize = GROUP_KEY_LEN + SEAL_TAG_LEN;
/// Keys tagged per parallel job.
const CHUNK: usize = 4096;

const TAG_LABEL: &[u8] = b"cleanroom/keyed-prf/tag/v1";
const WRAP_LABEL: &[u8] = b"cleanroom/keyed-prf/group-key/v1";

/// The group key of one keyed-prf session. Zeroized on drop; its `Debug`
/// never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct GroupKey([u8; GROUP_KEY_LEN]);

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKey(<secret>)")
    }
}

fn wrap_aad(sid: &SessionId, analysis_hash: &[u8; 32]) -> Vec<u8> {
    [WRAP_LABEL, sid.as_bytes(), analysis_hash].concat()
}

impl GroupKey {
    /// A fresh uniformly random key.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        // Filled in place: no copy of the key is left on the stack.
        let mut k = GroupKey([0u8; GROUP_KEY_LEN]);
        rng.fill_bytes(&mut k.0);
        k
    }

    /// The raw key: for transcript tests that search what crossed the wire
    /// for it. Never log or send it.
    #[doc(hidden)]
    pub fn as_bytes(&self) -> &[u8; GROUP_KEY_LEN] {
        &self.0
    }

    /// Seals the key for one other party ([`SEALED_GROUP_KEY_LEN`] bytes).
    pub fn seal(&self, wrap: &SealKey, sid: &SessionId, analysis_hash: &[u8; 32]) -> Vec<u8> {
        wrap.seal_bytes(&self.0, &wrap_aad(sid, analysis_hash))
    }

    /// Opens a sealed key; fails unless it was sealed under `wrap` for this
    /// session and analysis, unaltered.
    pub fn open(
        wrap: &SealKey,
        sealed: &[u8],
        sid: &SessionId,
        analysis_hash: &[u8; 32],
    ) -> Result<Self, ShareError> {
        let plain = wrap.open_bytes(sealed, &wrap_aad(sid, analysis_hash), GROUP_KEY_LEN)?;
        let mut k = GroupKey([0u8; GROUP_KEY_LEN]);
        k.0.copy_from_slice(&plain);
        Ok(k)
    }

    /// The tagger of session `sid`.
    pub fn tagger(&self, sid: &SessionId) -> Tagger {
        let mut prefix =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        prefix.update(TAG_LABEL);
        prefix.update(sid.as_bytes());
        Tagger { prefix }
    }
}

/// Computes the tags of one session: an HMAC state keyed with the group key
/// and fed the label and sid, cloned per key. Its state is key material,
/// zeroized on drop (hmac's `zeroize` feature).
#[derive(Clone)]
pub struct Tagger {
    prefix: Hmac<Sha256>,
}

impl std::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tagger(<secret>)")
    }
}

impl Tagger {
    /// The tag of one canonically encoded key.
    pub fn tag(&self, key: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.prefix.clone();
        m.update(key);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full[..TAG_LEN]);
        out
    }

    /// Tags a list of encoded keys on all cores: the flat buffer of their
    /// tags, in input order.
    pub fn tag_keys<K: AsRef<[u8]> + Sync>(&self, keys: &[K]) -> Vec<u8> {
        let mut out = Vec::new();
        self.tag_keys_onto(keys, &mut out);
        out
    }

    /// [`Tagger::tag_keys`] appended to `out` (no buffer of its own).
    pub fn tag_keys_onto<K: AsRef<[u8]> + Sync>(&self, keys: &[K], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + keys.len() * TAG_LEN, 0);
        out[start..]
            .par_chunks_mut(CHUNK * TAG_LEN)
            .zip(keys.par_chunks(CHUNK))
            .for_each(|(out, keys)| {
                for (o, k) in out.chunks_exact_mut(TAG_LEN).zip(keys) {
                    o.copy_from_slice(&self.tag(k.as_ref()));
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::os_rng;
    use crate::share::{IdentityKey, PairwiseSecret};

    #[test]
    fn tags_are_deterministic_per_key_and_session_only() {
        let mut rng = os_rng();
        let (s1, s2) = (SessionId::random(&mut rng), SessionId::random(&mut rng));
        let k = GroupKey::random(&mut rng);
        let t = k.tagger(&s1);
        assert_eq!(t.tag(b"alice"), k.clone().tagger(&s1).tag(b"alice"));
        assert_ne!(t.tag(b"alice"), t.tag(b"alicf"));
        assert_ne!(t.tag(b"alice"), k.tagger(&s2).tag(b"alice"));
        assert_ne!(
            t.tag(b"alice"),
            GroupKey::random(&mut rng).tagger(&s1).tag(b"alice")
        );
        let flat = t.tag_keys(&[b"a".as_slice(), b"b"]);
        assert_eq!(flat.len(), 2 * TAG_LEN);
        assert_eq!(flat[TAG_LEN..], t.tag(b"b"));
        // Appended after what the buffer holds.
        let mut onto = vec![7u8; 3];
        t.tag_keys_onto(&[b"a".as_slice(), b"b"], &mut onto);
        assert_eq!((&onto[..3], &onto[3..]), (&[7u8; 3][..], &flat[..]));
        assert_eq!(
            format!("{k:?} {t:?}"),
            "GroupKey(<secret>) Tagger(<secret>)"
        );
    }

    #[test]
    fn the_sealed_key_opens_only_for_its_receiver_session_and_analysis() {
        let mut rng = os_rng();
        let sid = SessionId::random(&mut rng);
        let (a, b, c) = (
            IdentityKey::random(&mut rng),
            IdentityKey::random(&mut rng),
            IdentityKey::random(&mut rng),
        );
        let h = [9u8; 32];
        let wrap = |me: &IdentityKey, peer: &IdentityKey, sid: &SessionId, r: &str| {
            PairwiseSecret::derive(me, &peer.public(), sid)
                .unwrap()
                .group_key_wrap(&h, "a", r)
        };
        let k = GroupKey::random(&mut rng);
        let sealed = k.seal(&wrap(&a, &b, &sid, "b"), &sid, &h);
        assert_eq!(sealed.len(), SEALED_GROUP_KEY_LEN);
        let opened = GroupKey::open(&wrap(&b, &a, &sid, "b"), &sealed, &sid, &h).unwrap();
        assert_eq!(opened.tagger(&sid).tag(b"x"), k.tagger(&sid).tag(b"x"));
        // Another receiver, another session, another analysis, a flipped bit.
        assert!(GroupKey::open(&wrap(&c, &a, &sid, "c"), &sealed, &sid, &h).is_err());
        let other = SessionId::random(&mut rng);
        assert!(GroupKey::open(&wrap(&b, &a, &other, "b"), &sealed, &other, &h).is_err());
        assert!(GroupKey::open(&wrap(&b, &a, &sid, "b"), &sealed, &sid, &[8; 32]).is_err());
        let mut bad = sealed.clone();
        bad[3] ^= 1;
        assert!(GroupKey::open(&wrap(&b, &a, &sid, "b"), &bad, &sid, &h).is_err());
    }
}
