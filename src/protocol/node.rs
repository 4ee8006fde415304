//! The node side of a run: DESIGN.md steps 2 (local step), 3 (re-blinding
//! others' lists), 5 (mask sums) and 6 (unmasking, at the recipient).
//!
//! A [`NodeSession`] holds the per-session secrets (blinding scalar, mask
//! seeds, sealing keys), all derived fresh for one `sid` and dropped (zeroized)
//! with the session. It performs no I/O: the gRPC service feeds it messages.

use std::collections::{BTreeMap, HashSet};

use rand::CryptoRng;
use rand::seq::SliceRandom;

use super::{ProtocolError, Release, ReleasedValue, Row, party_index, ring};
use crate::analysis::{Aggregate, Analysis, AnalysisHash};
use crate::keys::TAG_DUMMY;
use crate::psi::{BlindingKey, HashToGroup, POINT_LEN, TRUNCATED_LEN};
use crate::session::SessionId;
use crate::share::{self, IdentityKey, IdentityPublic, MaskSeed, PairwiseSecret, SealKey};

/// Pinned identity public keys of the other parties, by name.
pub type PeerKeys = BTreeMap<String, IdentityPublic>;

/// A node's prepared list (step 2): blinded points and masked features, both
/// in the same freshly shuffled order.
#[derive(Debug, Clone)]
pub struct PreparedList {
    /// `len * 32` bytes of compressed points.
    pub points: Vec<u8>,
    /// `len * width` masked feature values.
    pub masked: Vec<u64>,
    /// Features per row.
    pub width: usize,
    /// Rows, including padding.
    pub len: u64,
    /// Positions (ascending) of the DP dummy rows the coordinator may add to
    /// position lists to hide the match count (step 7); empty without DP.
    pub dummies: Vec<u64>,
}

/// The result of a mask-sum request (step 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskShare {
    /// Sealed for the recipient; the coordinator relays it unread.
    Sealed(Vec<u8>),
    /// This node is the recipient and kept the sum for itself.
    Kept,
}

/// What the coordinator delivers to the recipient's node (step 6).
pub use super::aggregate::Delivery;

/// One node's state for one session.
pub struct NodeSession {
    analysis: Analysis,
    hash: AnalysisHash,
    sid: SessionId,
    me: usize,
    blinding: BlindingKey,
    hasher: HashToGroup,
    own_seed: MaskSeed,
    pred_seed: MaskSeed,
    seal: Option<SealKey>,
    open_keys: Vec<Option<SealKey>>,
    kept: Option<Vec<u64>>,
    mask_sum_done: bool,
    delivered: bool,
}

impl std::fmt::Debug for NodeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSession")
            .field("sid", &self.sid)
            .field("me", &self.analysis.parties[self.me].name)
            .finish_non_exhaustive()
    }
}

fn aad(sid: &SessionId, hash: &AnalysisHash, owner: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(80);
    a.extend_from_slice(b"cleanroom/mask-sum/v1");
    a.extend_from_slice(sid.as_bytes());
    a.extend_from_slice(&hash.0);
    a.extend_from_slice(owner.as_bytes());
    a
}

impl NodeSession {
    /// Starts a session for party `me`: draws the blinding scalar and derives
    /// every seed and sealing key from the pinned peer keys.
    pub fn new<R: CryptoRng + ?Sized>(
        analysis: &Analysis,
        sid: SessionId,
        me: &str,
        identity: &IdentityKey,
        peers: &PeerKeys,
        rng: &mut R,
    ) -> Result<Self, ProtocolError> {
        let n = analysis.parties.len();
        let me_idx = party_index(analysis, me)?;
        let hash = analysis.hash();
        let name = |i: usize| analysis.parties[i].name.as_str();
        let secret_with = |i: usize| -> Result<PairwiseSecret, ProtocolError> {
            let pk = peers
                .get(name(i))
                .ok_or_else(|| ProtocolError::MissingPeerKey(name(i).to_string()))?;
            Ok(PairwiseSecret::derive(identity, pk, &sid)?)
        };
        let unmasker = ring::unmasker(me_idx, n);
        let pred = ring::unmasked_list(me_idx, n);
        let own_seed = secret_with(unmasker)?.mask_seed(&hash.0, me, name(unmasker));
        let pred_seed = secret_with(pred)?.mask_seed(&hash.0, name(pred), me);
        let recipient = party_index(analysis, &analysis.recipient)?;
        let seal = if recipient == me_idx {
            None
        } else {
            Some(secret_with(recipient)?.seal_key(&hash.0, name(pred), me, name(recipient)))
        };
        let mut open_keys = Vec::new();
        if recipient == me_idx {
            for owner in 0..n {
                let u = ring::unmasker(owner, n);
                open_keys.push(if u == me_idx {
                    None
                } else {
                    Some(secret_with(u)?.seal_key(&hash.0, name(owner), name(u), me))
                });
            }
        }
        Ok(NodeSession {
            analysis: analysis.clone(),
            hash,
            sid,
            me: me_idx,
            blinding: BlindingKey::random(rng),
            hasher: HashToGroup::new(&sid),
            own_seed,
            pred_seed,
            seal,
            open_keys,
            kept: None,
            mask_sum_done: false,
            delivered: false,
        })
    }

    /// The session id.
    pub fn sid(&self) -> SessionId {
        self.sid
    }

    /// This node's ring index.
    pub fn index(&self) -> usize {
        self.me
    }

    fn name(&self, i: usize) -> &str {
        &self.analysis.parties[i].name
    }

    /// Step 2: checks the local rows (one per key, right width, sums that fit
    /// in i64), clamps features to their DP bounds, pads with dummy rows
    /// (random keys, zero features) for `pad_to_multiple` and under DP,
    /// shuffles, blinds the keys and masks the features.
    pub fn prepare<R: CryptoRng + ?Sized>(
        &self,
        mut rows: Vec<Row>,
        rng: &mut R,
    ) -> Result<PreparedList, ProtocolError> {
        let me = self.name(self.me).to_string();
        let columns = self.analysis.features(&me);
        let width = columns.len();
        let bounds: Vec<u64> = columns
            .iter()
            .map(|c| self.analysis.bound(&me, c).unwrap_or(u64::MAX))
            .collect();
        let mut seen = HashSet::with_capacity(rows.len());
        let mut totals = vec![0u128; width];
        for r in &mut rows {
            if r.features.len() != width {
                return Err(ProtocolError::WidthMismatch {
                    party: me,
                    expected: width,
                    got: r.features.len(),
                });
            }
            if !seen.insert(r.key.as_slice()) {
                return Err(ProtocolError::DuplicateKey { party: me });
            }
            for ((f, b), t) in r.features.iter_mut().zip(&bounds).zip(&mut totals) {
                *f = (*f).min(*b);
                *t += *f as u128;
            }
        }
        if let Some(c) = totals.iter().position(|&t| t >= 1u128 << 63) {
            return Err(ProtocolError::SumTooLarge {
                party: me,
                column: columns[c].clone(),
            });
        }
        drop(seen);
        // Padding dummies hide the list size up to the bucket; DP dummies
        // (step 7) let the coordinator hide the match count from unmaskers.
        let real = rows.len() as u64;
        let padded = match self.analysis.privacy.pad_to_multiple {
            Some(m) => real.div_ceil(m).max(1) * m,
            None => real,
        };
        let total = padded + self.analysis.dp_dummy_rows();
        let mut order: Vec<u64> = (0..total).collect();
        order.shuffle(rng);
        let mut slots: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
        let mut dummies = Vec::new();
        let rows: Vec<Row> = order
            .iter()
            .enumerate()
            .map(|(pos, &src)| {
                if src < real {
                    return slots[src as usize].take().expect("each row is placed once");
                }
                if src >= padded {
                    dummies.push(pos as u64);
                }
                let mut key = vec![0u8; 33];
                key[0] = TAG_DUMMY;
                rng.fill_bytes(&mut key[1..]);
                Row {
                    key,
                    features: vec![0; width],
                }
            })
            .collect();
        let keys: Vec<&[u8]> = rows.iter().map(|r| r.key.as_slice()).collect();
        let points = self.blinding.blind_keys(&self.hasher, &keys);
        let mut masked: Vec<u64> = rows
            .iter()
            .flat_map(|r| r.features.iter().copied())
            .collect();
        self.own_seed.mask_rows(&mut masked, width);
        Ok(PreparedList {
            points,
            masked,
            width,
            len: rows.len() as u64,
            dummies,
        })
    }

    /// Step 3: re-blinds a chunk of `owner`'s list. The last party on the
    /// list's route returns truncated points.
    pub fn reblind(&self, owner: usize, points: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let n = self.analysis.parties.len();
        if owner >= n || owner == self.me {
            return Err(ProtocolError::Violation(format!(
                "party {} cannot re-blind list {owner}",
                self.name(self.me)
            )));
        }
        let out_len = if ring::is_final_pass(owner, self.me, n) {
            TRUNCATED_LEN
        } else {
            POINT_LEN
        };
        Ok(self.blinding.reblind(points, out_len)?)
    }

    /// Step 5: sums the masks of the matched positions of the predecessor's
    /// list (of `list_len` rows) and seals the sum for the recipient (or keeps
    /// it, when this node is the recipient). Without DP, refuses position
    /// lists shorter than `min_matched`. Answers once per session: a second
    /// position set would let the recipient learn sums over subsets.
    pub fn mask_sum(
        &mut self,
        owner: usize,
        positions: &[u64],
        list_len: u64,
    ) -> Result<MaskShare, ProtocolError> {
        let n = self.analysis.parties.len();
        if owner != ring::unmasked_list(self.me, n) {
            return Err(ProtocolError::Violation(format!(
                "party {} does not hold the mask seed of list {owner}",
                self.name(self.me)
            )));
        }
        if self.mask_sum_done {
            return Err(ProtocolError::Violation(
                "mask sum already computed in this session".into(),
            ));
        }
        let owner_name = self.name(owner).to_string();
        let width = self.analysis.features(&owner_name).len();
        if width == 0 {
            return Err(ProtocolError::Violation(format!(
                "list of {owner_name} has no features to unmask"
            )));
        }
        if self.analysis.privacy.dp.is_none()
            && (positions.len() as u64) < self.analysis.privacy.min_matched
        {
            return Err(ProtocolError::TooFewMatches {
                matched: positions.len() as i64,
                min: self.analysis.privacy.min_matched,
            });
        }
        let sum = self.pred_seed.mask_sum(positions, width, list_len)?;
        self.mask_sum_done = true;
        match &self.seal {
            Some(key) => Ok(MaskShare::Sealed(
                key.seal(&sum, &aad(&self.sid, &self.hash, &owner_name)),
            )),
            None => {
                self.kept = Some(sum);
                Ok(MaskShare::Kept)
            }
        }
    }

    /// Step 6, at the recipient: opens the sealed mask sums, unmasks the
    /// coordinator's sums and assembles the release in aggregate order.
    /// Succeeds at most once per session.
    pub fn unmask_release(&mut self, delivery: &Delivery) -> Result<Release, ProtocolError> {
        let n = self.analysis.parties.len();
        if self.delivered {
            return Err(ProtocolError::Violation(
                "a result was already delivered in this session".into(),
            ));
        }
        if self.open_keys.is_empty() {
            return Err(ProtocolError::Violation(format!(
                "party {} is not the recipient",
                self.name(self.me)
            )));
        }
        if delivery.sums.len() != n || delivery.sealed.len() != n {
            return Err(ProtocolError::Violation(
                "delivery does not cover every list".into(),
            ));
        }
        let min = self.analysis.privacy.min_matched;
        if delivery.count < min as i64 {
            return Err(ProtocolError::TooFewMatches {
                matched: delivery.count,
                min,
            });
        }
        let mut plain = Vec::with_capacity(n);
        for owner in 0..n {
            let owner_name = self.name(owner);
            let width = self.analysis.features(owner_name).len();
            if delivery.sums[owner].len() != width {
                return Err(ProtocolError::Violation(format!(
                    "sum of list {owner_name} has the wrong width"
                )));
            }
            if width == 0 {
                plain.push(Vec::new());
                continue;
            }
            let mask = match (&self.open_keys[owner], &delivery.sealed[owner]) {
                (None, _) => self.kept.clone().ok_or_else(|| {
                    ProtocolError::Violation("own mask sum was never computed".into())
                })?,
                (Some(key), Some(sealed)) => {
                    key.open(sealed, &aad(&self.sid, &self.hash, owner_name), width)?
                }
                (Some(_), None) => {
                    return Err(ProtocolError::Violation(format!(
                        "no mask sum for list {owner_name}"
                    )));
                }
            };
            plain.push(share::unmask(&delivery.sums[owner], &mask)?);
        }
        let values = self
            .analysis
            .aggregates
            .iter()
            .map(|a| {
                let value = match a {
                    Aggregate::Count => delivery.count,
                    Aggregate::Sum { party, column } => {
                        let (p, f) = self
                            .analysis
                            .sum_slot(party, column)
                            .ok_or_else(|| ProtocolError::UnknownParty(party.clone()))?;
                        // Column totals are < 2^63 and noise is small, so the
                        // two's complement reading is exact.
                        plain[p][f] as i64
                    }
                };
                Ok(ReleasedValue {
                    aggregate: a.to_string(),
                    value,
                })
            })
            .collect::<Result<_, ProtocolError>>()?;
        self.delivered = true;
        Ok(Release {
            analysis: self.analysis.name.clone(),
            analysis_hash: self.hash.to_hex(),
            sid: self.sid.to_hex(),
            noisy: self.analysis.privacy.dp.is_some(),
            values,
        })
    }
}
