//! The whole protocol in memory: every party's [`NodeSession`] and the
//! coordinator steps, wired directly. This is the reference the gRPC run must
//! agree with, and what the property and privacy tests exercise: it records
//! a [`Transcript`] of every message each party receives.

use std::collections::BTreeMap;

use rand::CryptoRng;

use super::{
    Delivery, FinalList, MaskShare, MaskSumRequest, MaskedList, NodeSession, PeerKeys,
    PreparedList, ProtocolError, Release, Row, RowBatch, Split, encode, party_index, plan_release,
    ring,
};
use crate::analysis::Analysis;
use crate::session::SessionId;
use crate::share::IdentityKey;

/// A message a node receives from the coordinator during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Step 2, keyed-prf, every party but the first: the group key the
    /// first party sealed for it.
    GroupKey(Vec<u8>),
    /// Step 3: a list (of `owner`) to re-blind.
    Reblind {
        /// Ring index of the list's owner.
        owner: usize,
        /// The points as received.
        points: Vec<u8>,
        /// Their sender's tag (pseudorandom: an HMAC under a key the
        /// receiver shares with its predecessor).
        tag: Vec<u8>,
    },
    /// Step 5: positions and pad of the predecessor's list.
    MaskSum(MaskSumRequest),
    /// Step 6 (recipient only): the padded sums and sealed mask sums.
    Deliver(Delivery),
}

/// Everything each party received in a simulated run (besides the analysis
/// and the session id, which every node receives at setup).
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// What the coordinator received at setup from each node, in ring
    /// order: under keyed-prf the first party's sealed group keys (one per
    /// party, empty for itself); empty otherwise.
    pub group_keys: Vec<Vec<Vec<u8>>>,
    /// What the coordinator received from each node's local step, in ring
    /// order. (Each node also knows its own list: it made it.)
    pub lists: Vec<PreparedList>,
    /// What the coordinator matched: each list's final elements (from its
    /// last re-blinding under ecdh-ring; as its owner sent them under
    /// keyed-prf).
    pub finals: Vec<Vec<u8>>,
    /// What the coordinator received from each list's unmasker (`None` for
    /// lists without features and where the recipient kept its own sum).
    pub sealed: Vec<Option<Vec<u8>>>,
    /// Per node, in ring order: the messages it received, in order.
    pub received: Vec<Vec<Inbound>>,
}

/// The release and, for tests only, what the coordinator knows.
#[derive(Debug, Clone)]
pub struct SimulationOutcome {
    /// What the recipient's node would store.
    pub release: Release,
    /// The exact number of matched keys (known to the coordinator).
    pub matched: u64,
    /// Every message every party received.
    pub transcript: Transcript,
}

/// Runs steps 2–7 for all parties of `analysis` on `inputs` (rows per party
/// name, features in [`Analysis::features`] order), in one batch and one
/// chunk per list.
pub fn simulate<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    inputs: &BTreeMap<String, Vec<Row>>,
    rng: &mut R,
) -> Result<SimulationOutcome, ProtocolError> {
    simulate_streaming(analysis, inputs, usize::MAX, usize::MAX, rng)
}

/// [`simulate`] as the gRPC run does it: every party's rows go into its
/// list builder in batches of `batch` rows, and every list travels — out of
/// the local step and through each hop of the ring — in chunks of `chunk`
/// points, each hop re-blinding chunk by chunk. Runs the analysis's
/// matching protocol (`[protocol] psi`).
pub fn simulate_streaming<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    inputs: &BTreeMap<String, Vec<Row>>,
    batch: usize,
    chunk: usize,
    rng: &mut R,
) -> Result<SimulationOutcome, ProtocolError> {
    let (batch, chunk) = (batch.max(1), chunk.max(1));
    let n = analysis.parties.len();
    let names = analysis.party_names();
    let sid = SessionId::random(rng);
    let identities: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::random(rng)).collect();
    let peers: PeerKeys = names
        .iter()
        .zip(&identities)
        .map(|(n, k)| (n.to_string(), k.public()))
        .collect();
    let mut nodes = names
        .iter()
        .zip(&identities)
        .map(|(name, id)| NodeSession::new(analysis, sid, name, id, &peers, rng))
        .collect::<Result<Vec<_>, _>>()?;
    let mut t = Transcript {
        received: vec![Vec::new(); n],
        group_keys: nodes
            .iter()
            .map(|node| node.sealed_group_keys().to_vec())
            .collect(),
        ..Transcript::default()
    };
    // keyed-prf: the coordinator relays the first party's sealed group key
    // to every other party, which opens it before its local step.
    if analysis.psi == crate::analysis::Psi::KeyedPrf {
        for (j, node) in nodes.iter().enumerate().skip(1) {
            let sealed = t.group_keys[0].get(j).cloned().unwrap_or_default();
            t.received[j].push(Inbound::GroupKey(sealed.clone()));
            node.accept_group_key(&sealed)?;
        }
    }

    // Step 2: the local step, batch by batch into each builder, then the
    // shuffled list chunk by chunk.
    let mut shuffled = Vec::with_capacity(n);
    for (i, node) in nodes.iter().enumerate() {
        let rows = inputs
            .get(names[i])
            .ok_or_else(|| ProtocolError::UnknownParty(names[i].to_string()))?;
        let mut b = node.list_builder();
        for part in rows.chunks(batch) {
            b.push(&RowBatch::from_rows(part))?;
        }
        shuffled.push(b.finish(rng)?);
    }
    // Step 3: the blinding ring, chunk by chunk through every hop (no hop
    // under keyed-prf: the owner's tags are final).
    let mut length_tags = Vec::with_capacity(n);
    // The coordinator's split of the final lists, as they arrive.
    let split = Split::new();
    let mut final_lists = Vec::with_capacity(n);
    for (owner, list) in shuffled.iter().enumerate() {
        let mut prepared = PreparedList {
            points: Vec::new(),
            masked: MaskedList {
                width: list.width(),
                len: list.len(),
                dummies: list.dummies().to_vec(),
                values: Vec::new(),
            },
        };
        let mut finals = Vec::new();
        let mut split_list = FinalList::new(&split, encode::final_len(analysis.psi), list.len())?;
        let mut start = 0;
        // Each hop accepts the stream on the owner's length tag.
        let tags = nodes[owner].length_tags(list.len());
        let mut streams = encode::route(analysis.psi, owner, n)
            .into_iter()
            .map(|hop| Ok((hop, nodes[hop].open_reblind(owner, list.len(), &tags[hop])?)))
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        while start < list.len() {
            let (mut points, masked) = list.chunk(start, chunk);
            // Each chunk carries its sender's tag for the next hop.
            let mut tag = nodes[owner].chunk_tag(owner, start, &points);
            start += (points.len() / list.element_len()) as u64;
            prepared.points.extend_from_slice(&points);
            prepared.masked.values.extend_from_slice(&masked);
            for (hop, stream) in &mut streams {
                t.received[*hop].push(Inbound::Reblind {
                    owner,
                    points: points.clone(),
                    tag: tag.clone(),
                });
                (points, tag) = nodes[*hop].reblind(stream, &points, &tag)?;
            }
            finals.extend_from_slice(&points);
            split_list.push(&points)?;
        }
        t.lists.push(prepared);
        t.finals.push(finals);
        final_lists.push(split_list);
        length_tags.push(tags);
    }
    drop(shuffled);
    // Steps 4–7 on the coordinator: match, DP dummies, sums, noise, pads.
    let kept: Vec<MaskedList> = t.lists.iter().map(|l| l.masked.clone()).collect();
    let plan = plan_release(analysis, &kept, &final_lists, rng)?;
    // Mask sums (only once the coordinator has decided to release), then
    // unmasking at the recipient.
    t.sealed = vec![None; n];
    let recipient = party_index(analysis, &analysis.recipient)?;
    for (owner, list) in kept.iter().enumerate() {
        if list.width == 0 {
            continue;
        }
        let u = ring::unmasker(owner, n);
        let length_tag = match analysis.psi {
            crate::analysis::Psi::KeyedPrf => length_tags[owner][u].clone(),
            crate::analysis::Psi::EcdhRing => Vec::new(),
        };
        let req = plan.mask_sum_request(owner, list.len, length_tag);
        t.received[u].push(Inbound::MaskSum(req.clone()));
        let share = nodes[u].mask_sum(&req)?;
        // As the coordinator does: only a box of the length the analysis
        // fixes is relayed.
        let got = match &share {
            MaskShare::Sealed(s) => s.len(),
            MaskShare::Kept => 0,
        };
        if got != super::sealed_mask_sum_len(list.width, u, recipient) {
            return Err(ProtocolError::Violation(format!(
                "sealed mask sum of {got} bytes from {}",
                analysis.parties[u].name
            )));
        }
        if let MaskShare::Sealed(s) = share {
            t.sealed[owner] = Some(s);
        }
    }
    let delivery = plan.delivery(t.sealed.clone());
    t.received[recipient].push(Inbound::Deliver(delivery.clone()));
    let release = nodes[recipient].unmask_release(&delivery)?;
    Ok(SimulationOutcome {
        release,
        matched: plan.matched,
        transcript: t,
    })
}
