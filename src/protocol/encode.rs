//! The matching protocol behind one interface (`[protocol] psi`).
//!
//! | side | step | ecdh-ring | keyed-prf |
//! |---|---|---|---|
//! | node | prepare ([`KeyEncoder::encode_onto`]) | `H(sid‖key)·k` (32-byte point) | `HMAC(K, …‖sid‖key)[..16]` |
//! | node | transform (step 3, [`super::NodeSession::reblind`]) | re-blind by `k`, truncate on the last pass | none |
//! | coordinator | [`route`] | the other parties in ring order | none |
//! | coordinator | match ([`super::match_finals`]) | on [`final_len`] bytes (16) | on [`final_len`] bytes (16) |
//!
//! Everything else (the list builder's checks, padding, shuffle and masks,
//! mask sums, DP, thresholds, budget, audit) is shared and does not know
//! which protocol runs: it sees elements of [`element_len`] bytes.

use std::sync::OnceLock;

use rand::CryptoRng;

use super::{ProtocolError, ring};
use crate::analysis::Psi;
use crate::prf::{TAG_LEN, Tagger};
use crate::psi::{BlindingKey, HashToGroup, POINT_LEN, TRUNCATED_LEN};
use crate::session::SessionId;

/// Bytes per element of a list as its owner sends it.
pub fn element_len(psi: Psi) -> usize {
    match psi {
        Psi::EcdhRing => POINT_LEN,
        Psi::KeyedPrf => TAG_LEN,
    }
}

/// Bytes per element of a final list, the one the coordinator matches.
pub fn final_len(psi: Psi) -> usize {
    match psi {
        Psi::EcdhRing => TRUNCATED_LEN,
        Psi::KeyedPrf => TAG_LEN,
    }
}

/// The parties `owner`'s list passes through after leaving its owner, in
/// order; the last of them returns the final list. Empty under keyed-prf:
/// the owner's tags are final.
pub fn route(psi: Psi, owner: usize, n: usize) -> Vec<usize> {
    match psi {
        Psi::EcdhRing => ring::route(owner, n),
        Psi::KeyedPrf => Vec::new(),
    }
}

/// A node's secret for the prepare and transform steps of one session.
pub enum KeyEncoder {
    /// The node's fresh blinding scalar and the session's hash to the group.
    EcdhRing {
        /// `k`, drawn fresh for the session.
        blinding: BlindingKey,
        /// `H(sid‖·)`.
        hasher: HashToGroup,
    },
    /// The session's tagger, set once the group key is known (at once for
    /// the first party, which draws it; on receipt for the others).
    KeyedPrf(OnceLock<Tagger>),
}

impl std::fmt::Debug for KeyEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyEncoder({}, <secret>)", self.psi())
    }
}

impl KeyEncoder {
    /// A fresh encoder for `psi` (under ecdh-ring, draws the scalar).
    pub fn new<R: CryptoRng + ?Sized>(psi: Psi, sid: &SessionId, rng: &mut R) -> Self {
        match psi {
            Psi::EcdhRing => KeyEncoder::EcdhRing {
                blinding: BlindingKey::random(rng),
                hasher: HashToGroup::new(sid),
            },
            Psi::KeyedPrf => KeyEncoder::KeyedPrf(OnceLock::new()),
        }
    }

    /// The protocol.
    pub fn psi(&self) -> Psi {
        match self {
            KeyEncoder::EcdhRing { .. } => Psi::EcdhRing,
            KeyEncoder::KeyedPrf(_) => Psi::KeyedPrf,
        }
    }

    /// Bytes per element this encoder produces.
    pub fn element_len(&self) -> usize {
        element_len(self.psi())
    }

    /// Prepare: the elements of encoded keys, flat, in input order, on all
    /// cores, appended to `out` (a node's list as it grows). Under
    /// keyed-prf the tags are written in place, and the call fails (leaving
    /// `out` as it was) until the group key is known; ecdh-ring's points
    /// are blinded into a buffer of the batch, then copied.
    pub fn encode_onto<K: AsRef<[u8]> + Sync>(
        &self,
        keys: &[K],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        match self {
            KeyEncoder::EcdhRing { blinding, hasher } => {
                out.extend_from_slice(&blinding.blind_keys(hasher, keys));
            }
            KeyEncoder::KeyedPrf(t) => t
                .get()
                .ok_or_else(|| {
                    ProtocolError::Violation(
                        "keyed-prf: the group key has not been received in this session".into(),
                    )
                })?
                .tag_keys_onto(keys, out),
        }
        Ok(())
    }

    /// The blinding scalar, for the transform step; refused under keyed-prf.
    pub fn blinding(&self) -> Result<&BlindingKey, ProtocolError> {
        match self {
            KeyEncoder::EcdhRing { blinding, .. } => Ok(blinding),
            KeyEncoder::KeyedPrf(_) => Err(ProtocolError::Violation(
                "this session runs keyed-prf: there is no list to re-blind".into(),
            )),
        }
    }

    /// Sets the session's tagger (keyed-prf, once); refused under
    /// ecdh-ring or when already set.
    pub fn set_tagger(&self, tagger: Tagger) -> Result<(), ProtocolError> {
        match self {
            KeyEncoder::KeyedPrf(t) => t.set(tagger).map_err(|_| {
                ProtocolError::Violation("keyed-prf: the group key was already set".into())
            }),
            KeyEncoder::EcdhRing { .. } => Err(ProtocolError::Violation(
                "this session runs ecdh-ring: a group key is not part of it".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prf::GroupKey;
    use crate::session::os_rng;

    #[test]
    fn each_encoder_refuses_the_other_protocols_steps() {
        let mut rng = os_rng();
        let sid = SessionId::random(&mut rng);
        let ring = KeyEncoder::new(Psi::EcdhRing, &sid, &mut rng);
        let prf = KeyEncoder::new(Psi::KeyedPrf, &sid, &mut rng);
        let tagger = GroupKey::random(&mut rng).tagger(&sid);
        assert!(ring.set_tagger(tagger.clone()).is_err());
        assert!(prf.blinding().is_err());
        let encode = |e: &KeyEncoder| {
            let mut out = Vec::new();
            e.encode_onto(&[b"x"], &mut out).map(|()| out)
        };
        assert!(encode(&prf).is_err());
        prf.set_tagger(tagger.clone()).unwrap();
        assert!(prf.set_tagger(tagger.clone()).is_err());
        assert_eq!(encode(&prf).unwrap(), tagger.tag(b"x"));
        assert_eq!(encode(&ring).unwrap().len(), POINT_LEN);
        assert_eq!(route(Psi::KeyedPrf, 0, 3), Vec::<usize>::new());
        assert_eq!(route(Psi::EcdhRing, 0, 3), vec![1, 2]);
        assert_eq!(final_len(Psi::KeyedPrf), final_len(Psi::EcdhRing));
    }
}
