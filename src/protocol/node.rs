//! The node side of a run: DESIGN.md steps 2 (local step), 3 (re-blinding
//! others' lists), 5 (mask sums) and 6 (unmasking, at the recipient).
//!
//! A [`NodeSession`] holds the per-session secrets (blinding scalar, mask
//! seeds, sealing keys), all derived fresh for one `sid` and dropped (zeroized)
//! with the session. It performs no I/O: the gRPC service feeds it messages.

use std::collections::BTreeMap;

use rand::CryptoRng;

use super::encode::KeyEncoder;
use super::local::{ListBuilder, RowBatch};
use super::{
    Layout, MAX_LIST_ROWS, MaskSumRequest, ProtocolError, Release, ReleaseRow, ReleasedValue, Row,
    party_index, ring,
};
use crate::analysis::{Aggregate, Analysis, AnalysisHash, Psi};
use crate::prf::GroupKey;
use crate::psi::{POINT_LEN, TRUNCATED_LEN};
use crate::session::SessionId;
use crate::share::{
    self, ChunkKey, IdentityKey, IdentityPublic, LengthKey, MaskSeed, PairwiseSecret, SealKey,
};

/// Pinned identity public keys of the other parties, by name.
pub type PeerKeys = BTreeMap<String, IdentityPublic>;

/// A node's prepared list (step 2): blinded points and masked features, both
/// in the same freshly shuffled order.
#[derive(Debug, Clone)]
pub struct PreparedList {
    /// `len * 32` bytes of compressed points.
    pub points: Vec<u8>,
    /// The masked values, layout and dummies: what the coordinator keeps
    /// once the points have gone around the ring.
    pub masked: MaskedList,
}

/// What the coordinator keeps of a list: its masked values (it sums them
/// once the matched positions are known) and, under DP, its dummies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskedList {
    /// `len * width` masked values.
    pub values: Vec<u64>,
    /// Masked values per row ([`Layout::row_width`]).
    pub width: usize,
    /// Rows, including padding.
    pub len: u64,
    /// Positions of the DP dummy rows the coordinator may add to position
    /// lists to hide the match count (step 7); empty without DP. In blocks of
    /// `2·shift`, one per group, each ascending; the grouping party's block
    /// `g` holds the dummies that count towards group `g`.
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

/// A re-blind stream a node accepted (step 3): whose list, its length as
/// authenticated by its owner, and how many points are done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReblindStream {
    owner: usize,
    rows: u64,
    done: u64,
    out_len: usize,
}

impl ReblindStream {
    /// The owner's ring index.
    pub fn owner(&self) -> usize {
        self.owner
    }

    /// Points re-blinded so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The authenticated length of the list.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// One node's state for one session.
pub struct NodeSession {
    pub(super) analysis: Analysis,
    hash: AnalysisHash,
    sid: SessionId,
    pub(super) me: usize,
    pub(super) layout: Layout,
    /// The prepare and transform secret of the session's protocol.
    pub(super) encoder: KeyEncoder,
    /// keyed-prf, first party only: the group key sealed for each party in
    /// ring order (empty for itself).
    group_out: Vec<Vec<u8>>,
    /// keyed-prf, other parties: the key opening the first party's box.
    group_in: Option<SealKey>,
    pub(super) own_seed: MaskSeed,
    pred_seed: MaskSeed,
    seal: Option<SealKey>,
    open_keys: Vec<Option<SealKey>>,
    /// Per party `j`: the key authenticating this node's list length to `j`
    /// (`None` for itself).
    length_out: Vec<Option<LengthKey>>,
    /// Per party `i`: the key checking `i`'s list length (`None` for itself).
    length_in: Vec<Option<LengthKey>>,
    /// Per party `i`: the length of `i`'s list as its tag authenticated it
    /// here (set when its re-blind stream opens under ecdh-ring, or with the
    /// mask-sum request under keyed-prf): the mask sum over `i`'s
    /// list must use this length, not one the coordinator chose.
    verified_rows: Vec<std::sync::OnceLock<u64>>,
    /// Authenticates the point chunks this node sends its successor (its
    /// own list, and lists it re-blinds before their final pass).
    chunk_out: ChunkKey,
    /// Checks the point chunks its predecessor sent it.
    chunk_in: ChunkKey,
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
        // One DH per peer, in ring order (so every node pins every peer's
        // identity key); every key of the session derives from these.
        let secrets = (0..n)
            .map(|i| (i != me_idx).then(|| secret_with(i)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let secret_with = |i: usize| {
            secrets[i]
                .as_ref()
                .ok_or_else(|| ProtocolError::Violation("no pairwise secret with oneself".into()))
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
        // Length keys with every other party.
        let length_out = secrets
            .iter()
            .enumerate()
            .map(|(j, s)| s.as_ref().map(|s| s.length_key(&hash.0, me, name(j))))
            .collect();
        let length_in = secrets
            .iter()
            .enumerate()
            .map(|(j, s)| s.as_ref().map(|s| s.length_key(&hash.0, name(j), me)))
            .collect();
        // Chunk keys with the ring neighbours: every list moves from a
        // node to its successor (through the coordinator).
        let (succ, pred_node) = ((me_idx + 1) % n, (me_idx + n - 1) % n);
        let chunk_out = secret_with(succ)?.chunk_key(&hash.0, me, name(succ));
        let chunk_in = secret_with(pred_node)?.chunk_key(&hash.0, name(pred_node), me);
        // keyed-prf: the first party draws the group key and seals it for
        // every other party; they open it at their local step.
        let encoder = KeyEncoder::new(analysis.psi, &sid, rng);
        let (mut group_out, mut group_in) = (Vec::new(), None);
        if analysis.psi == Psi::KeyedPrf {
            if me_idx == 0 {
                let key = GroupKey::random(rng);
                for j in 0..n {
                    group_out.push(if j == 0 {
                        Vec::new()
                    } else {
                        let wrap = secret_with(j)?.group_key_wrap(&hash.0, name(0), name(j));
                        key.seal(&wrap, &sid, &hash.0)
                    });
                }
                encoder.set_tagger(key.tagger(&sid))?;
            } else {
                group_in = Some(secret_with(0)?.group_key_wrap(&hash.0, name(0), me));
            }
        }
        Ok(NodeSession {
            encoder,
            group_out,
            group_in,
            chunk_out,
            chunk_in,
            analysis: analysis.clone(),
            hash,
            sid,
            me: me_idx,
            layout: Layout::new(analysis),
            own_seed,
            pred_seed,
            seal,
            open_keys,
            length_out,
            verified_rows: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
            length_in,
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

    pub(super) fn name(&self, i: usize) -> &str {
        &self.analysis.parties[i].name
    }

    /// Step 2, streaming: a builder that takes the local rows batch by
    /// batch (see [`super::local`]).
    pub fn list_builder(&self) -> ListBuilder<'_> {
        ListBuilder::new(self)
    }

    /// Step 2 in one go: checks the local rows (one per key, right width,
    /// sums that fit in i64), clamps features to their DP bounds, lays rows
    /// out by group, pads with dummy rows (random keys) for
    /// `pad_to_multiple` and under DP, shuffles, blinds the keys and masks
    /// the features. The same as streaming them through
    /// [`NodeSession::list_builder`] in one batch.
    pub fn prepare<R: CryptoRng + ?Sized>(
        &self,
        rows: Vec<Row>,
        rng: &mut R,
    ) -> Result<PreparedList, ProtocolError> {
        let mut b = self.list_builder();
        b.push(&RowBatch::from_rows(&rows))?;
        Ok(b.finish(rng)?.into_prepared())
    }

    /// Step 2: tags authenticating this node's list length (`rows`), one
    /// per party in ring order (empty for itself). The coordinator relays
    /// each to the node that re-blinds the list, which re-blinds no more
    /// points than the tagged length (and, with [`NodeSession::chunk_tag`],
    /// only the points its predecessor sent).
    pub fn length_tags(&self, rows: u64) -> Vec<Vec<u8>> {
        self.length_out
            .iter()
            .map(|k| {
                k.as_ref().map_or_else(Vec::new, |k| {
                    k.tag(&self.sid, &self.hash.0, self.me as u32, rows)
                })
            })
            .collect()
    }

    /// The matching protocol of the session.
    pub fn psi(&self) -> Psi {
        self.encoder.psi()
    }

    /// Step 1, keyed-prf, first party: the group key sealed for each party
    /// in ring order (empty for itself). Empty in every other case.
    pub fn sealed_group_keys(&self) -> &[Vec<u8>] {
        &self.group_out
    }

    /// Step 2, keyed-prf, every party but the first: opens the group key
    /// the first party sealed for this node (relayed by the coordinator,
    /// which cannot open it). Required before the local step; refused in
    /// an ecdh-ring session, at the first party, or a second time.
    pub fn accept_group_key(&self, sealed: &[u8]) -> Result<(), ProtocolError> {
        if self.psi() != Psi::KeyedPrf {
            return Err(ProtocolError::Violation(
                "this session runs ecdh-ring: a group key is not part of it".into(),
            ));
        }
        let wrap = self.group_in.as_ref().ok_or_else(|| {
            ProtocolError::Violation("the first party draws the group key; it receives none".into())
        })?;
        let key = GroupKey::open(wrap, sealed, &self.sid, &self.hash.0)?;
        self.encoder.set_tagger(key.tagger(&self.sid))
    }

    /// Step 5, keyed-prf: the unmasker of `owner`'s list (its predecessor)
    /// checks the owner's tag on the list's length, which under ecdh-ring
    /// arrives with the re-blind stream; the mask sum then uses no other
    /// length. Refused in an ecdh-ring session.
    pub fn accept_length(&self, owner: usize, rows: u64, tag: &[u8]) -> Result<(), ProtocolError> {
        let n = self.analysis.parties.len();
        if self.psi() != Psi::KeyedPrf {
            return Err(ProtocolError::Violation(
                "this session runs ecdh-ring: list lengths arrive with the re-blind stream".into(),
            ));
        }
        if owner >= n || owner != ring::unmasked_list(self.me, n) {
            return Err(ProtocolError::Violation(format!(
                "party {} does not unmask list {owner}",
                self.name(self.me)
            )));
        }
        self.verify_length(owner, rows, tag)
    }

    /// Checks `owner`'s tag on its list length and remembers the length.
    fn verify_length(&self, owner: usize, rows: u64, tag: &[u8]) -> Result<(), ProtocolError> {
        if rows > MAX_LIST_ROWS {
            return Err(ProtocolError::ListTooLong {
                party: self.name(owner).to_string(),
            });
        }
        let key = self.length_in[owner]
            .as_ref()
            .ok_or_else(|| ProtocolError::Violation("no length key".into()))?;
        if !key.verify(&self.sid, &self.hash.0, owner as u32, rows, tag) {
            return Err(ProtocolError::UnauthenticatedLength(
                self.name(owner).to_string(),
            ));
        }
        // A tag authenticates one length per owner and session, so a second
        // (refused elsewhere) stream could only set the same value.
        let _ = self.verified_rows[owner].set(rows);
        Ok(())
    }

    /// Step 3 (ecdh-ring): accepts a re-blind stream of `owner`'s list if
    /// `owner`'s tag authenticates its length `rows` (see
    /// [`NodeSession::length_tags`]). Refused in a keyed-prf session.
    pub fn open_reblind(
        &self,
        owner: usize,
        rows: u64,
        tag: &[u8],
    ) -> Result<ReblindStream, ProtocolError> {
        let n = self.analysis.parties.len();
        self.encoder.blinding()?;
        if owner >= n || owner == self.me {
            return Err(ProtocolError::Violation(format!(
                "party {} cannot re-blind list {owner}",
                self.name(self.me)
            )));
        }
        self.verify_length(owner, rows, tag)?;
        Ok(ReblindStream {
            owner,
            rows,
            done: 0,
            out_len: if ring::is_final_pass(owner, self.me, n) {
                TRUNCATED_LEN
            } else {
                POINT_LEN
            },
        })
    }

    /// Step 2: the tag with which this node sends its successor the points
    /// of list `owner` from position `offset` on (its own list, `owner` =
    /// this node, or a list it re-blinded). The coordinator relays it; the
    /// successor re-blinds nothing without it (see [`NodeSession::reblind`]).
    /// Empty under keyed-prf, where no node receives another's list.
    pub fn chunk_tag(&self, owner: usize, offset: u64, points: &[u8]) -> Vec<u8> {
        if self.psi() == Psi::KeyedPrf {
            return Vec::new();
        }
        self.chunk_out
            .tag(&self.sid, &self.hash.0, owner as u32, offset, points)
    }

    /// Step 3: re-blinds the next chunk of a stream, which must carry the
    /// tag of the node that sent it (the list's owner or the previous hop,
    /// always this node's predecessor): the coordinator cannot alter,
    /// replace, reorder or insert a point, so it cannot slip a guessed key's
    /// point `H(sid‖x)` through this node's blinding. Refuses points beyond
    /// the owner's authenticated length, and names the position (in the
    /// list) of any point that is not a canonical, non-identity encoding.
    /// Returns the re-blinded points and their tag for the successor (empty
    /// after the final, truncating pass, whose output stays with the
    /// coordinator).
    pub fn reblind(
        &self,
        stream: &mut ReblindStream,
        points: &[u8],
        tag: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), ProtocolError> {
        let k = (points.len() / POINT_LEN) as u64;
        if stream.done + k > stream.rows {
            return Err(ProtocolError::Violation(format!(
                "re-blind stream of {}'s list carries more points than the {} its owner authenticated",
                self.name(stream.owner),
                stream.rows
            )));
        }
        let owner = stream.owner as u32;
        if !self
            .chunk_in
            .verify(&self.sid, &self.hash.0, owner, stream.done, points, tag)
        {
            return Err(ProtocolError::UnauthenticatedChunk {
                owner: self.name(stream.owner).to_string(),
                offset: stream.done,
            });
        }
        let out = self
            .encoder
            .blinding()?
            .reblind(points, stream.out_len)
            .map_err(|e| match e {
                crate::psi::PsiError::InvalidPoint { index } => {
                    ProtocolError::InvalidPoint(stream.done + index as u64)
                }
                e => e.into(),
            })?;
        let out_tag = if stream.out_len == POINT_LEN {
            self.chunk_tag(stream.owner, stream.done, &out)
        } else {
            Vec::new()
        };
        stream.done += k;
        Ok((out, out_tag))
    }

    /// Step 5: sums the masks of the matched positions of the predecessor's
    /// list, adds the coordinator's one-time pad and seals `M_i + r_i` for
    /// the recipient (or keeps it, when this node is the recipient). Without
    /// DP, refuses position lists shorter than `min_matched`. Answers once
    /// per session: a second position set would let the recipient learn sums
    /// over subsets.
    pub fn mask_sum(&mut self, req: &MaskSumRequest) -> Result<MaskShare, ProtocolError> {
        let n = self.analysis.parties.len();
        let owner = req.owner;
        if owner >= n || owner != ring::unmasked_list(self.me, n) {
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
        if !req.length_tag.is_empty() {
            self.accept_length(owner, req.list_len, &req.length_tag)?;
        }
        let owner_name = self.name(owner).to_string();
        let width = self.layout.row_width(owner);
        if width == 0 {
            return Err(ProtocolError::Violation(format!(
                "list of {owner_name} has no features to unmask"
            )));
        }
        if req.pad.len() != width {
            return Err(ProtocolError::Violation(format!(
                "pad has {} words, list of {owner_name} has {width} masked slots",
                req.pad.len()
            )));
        }
        if self.verified_rows[owner].get() != Some(&req.list_len) {
            return Err(ProtocolError::Violation(format!(
                "mask sum over a list length of {} that {owner_name} did not authenticate here",
                req.list_len
            )));
        }
        if req.list_len > MAX_LIST_ROWS || req.positions.list_len() != req.list_len {
            return Err(ProtocolError::Violation(
                "list length out of bounds, or positions over another length".into(),
            ));
        }
        let min = self.analysis.privacy.min_matched;
        if self.analysis.privacy.dp.is_none() && req.positions.count() < min {
            return Err(ProtocolError::TooFewMatches);
        }
        let mut sum = self.pred_seed.mask_sum(&req.positions, width);
        share::add_assign(&mut sum, &req.pad);
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

    /// Step 6, at the recipient: opens the sealed (padded) mask sums,
    /// unmasks the coordinator's (padded) sums, and assembles the release in
    /// aggregate order, one row per group; a group whose (noisy) count is
    /// below `min_matched` is suppressed. Succeeds at most once per session.
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
        let wants_count =
            !self.layout.is_grouped() && self.analysis.aggregates.contains(&Aggregate::Count);
        if delivery.count.is_some() != wants_count {
            return Err(ProtocolError::Violation(
                "a delivery carries a count exactly when the analysis releases an ungrouped count"
                    .into(),
            ));
        }
        let min = self.analysis.privacy.min_matched;
        let below = |count: i64| min > 0 && count < min as i64;
        if delivery.count.is_some_and(below) {
            return Err(ProtocolError::TooFewMatches);
        }
        let mut plain = Vec::with_capacity(n);
        for owner in 0..n {
            let owner_name = self.name(owner);
            let width = self.layout.row_width(owner);
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
        // Under DP a group's count carries `shift` dummies on average (step
        // 7); the release subtracts the public shift.
        let shift = self
            .analysis
            .privacy
            .dp
            .as_ref()
            .map_or(0, |d| d.dummy_shift() as i64);
        let labels: Vec<Option<String>> = match &self.analysis.grouping {
            Some(g) => g.groups.iter().cloned().map(Some).collect(),
            None => vec![None],
        };
        let mut rows = Vec::with_capacity(labels.len());
        for (g, label) in labels.into_iter().enumerate() {
            // Values are < 2^63 (column totals) plus small noise, so the
            // two's complement reading of the ring element is exact.
            // Ungrouped without a released count: the coordinator (and,
            // without DP, the unmasker) applied the threshold already.
            let count = match (delivery.count, self.layout.count_slot(g)) {
                (Some(c), _) => Some(c),
                (None, Some((p, slot))) => {
                    Some((plain[p][slot] as i64).checked_sub(shift).ok_or_else(|| {
                        ProtocolError::Violation("unmasked count out of range".into())
                    })?)
                }
                (None, None) => None,
            };
            if count.is_some_and(below) {
                rows.push(ReleaseRow {
                    group: label,
                    suppressed: true,
                    values: Vec::new(),
                });
                continue;
            }
            let values = self
                .analysis
                .aggregates
                .iter()
                .map(|a| {
                    let value = match a {
                        Aggregate::Count => count.ok_or_else(|| {
                            ProtocolError::Violation("no count was delivered".into())
                        })?,
                        Aggregate::Sum { party, column } => {
                            let (p, f) = self
                                .analysis
                                .sum_slot(party, column)
                                .ok_or_else(|| ProtocolError::UnknownParty(party.clone()))?;
                            plain[p][self.layout.feature_slot(p, f, g)] as i64
                        }
                    };
                    Ok(ReleasedValue {
                        aggregate: a.to_string(),
                        value,
                    })
                })
                .collect::<Result<_, ProtocolError>>()?;
            rows.push(ReleaseRow {
                group: label,
                suppressed: false,
                values,
            });
        }
        self.delivered = true;
        Ok(Release {
            analysis: self.analysis.name.clone(),
            analysis_hash: self.hash.to_hex(),
            sid: self.sid.to_hex(),
            noisy: self.analysis.privacy.dp.is_some(),
            group_by: self
                .analysis
                .grouping
                .as_ref()
                .map(|g| format!("{}.{}", g.party, g.column)),
            rows,
        })
    }
}
