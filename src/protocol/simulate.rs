//! The whole protocol in memory: every party's [`NodeSession`] and the
//! coordinator steps, wired directly. This is the reference the gRPC run must
//! agree with, and what the property and privacy tests exercise: it records
//! a [`Transcript`] of every message each party receives.

use std::collections::BTreeMap;

use rand::CryptoRng;

use super::{
    Delivery, MaskShare, MaskSumRequest, NodeSession, PeerKeys, PreparedList, ProtocolError,
    Release, Row, party_index, plan_release, ring,
};
use crate::analysis::Analysis;
use crate::session::SessionId;
use crate::share::IdentityKey;

/// A message a node receives from the coordinator during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Step 3: a list (of `owner`) to re-blind.
    Reblind {
        /// Ring index of the list's owner.
        owner: usize,
        /// The points as received.
        points: Vec<u8>,
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
    /// What the coordinator received from each node's local step, in ring
    /// order. (Each node also knows its own list: it made it.)
    pub lists: Vec<PreparedList>,
    /// What the coordinator received back from each list's last re-blinding.
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
/// name, features in [`Analysis::features`] order).
pub fn simulate<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    inputs: &BTreeMap<String, Vec<Row>>,
    rng: &mut R,
) -> Result<SimulationOutcome, ProtocolError> {
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
        ..Transcript::default()
    };

    // Step 2: local step.
    for (i, node) in nodes.iter().enumerate() {
        let rows = inputs
            .get(names[i])
            .cloned()
            .ok_or_else(|| ProtocolError::UnknownParty(names[i].to_string()))?;
        t.lists.push(node.prepare(rows, rng)?);
    }
    // Step 3: the blinding ring.
    for (owner, list) in t.lists.iter().enumerate() {
        let mut points = list.points.clone();
        for hop in ring::route(owner, n) {
            t.received[hop].push(Inbound::Reblind {
                owner,
                points: points.clone(),
            });
            points = nodes[hop].reblind(owner, &points)?;
        }
        t.finals.push(points);
    }
    // Steps 4–7 on the coordinator: match, DP dummies, sums, noise, pads.
    let plan = plan_release(analysis, &t.lists, &t.finals, rng)?;
    // Mask sums (only once the coordinator has decided to release), then
    // unmasking at the recipient.
    t.sealed = vec![None; n];
    for (owner, list) in t.lists.iter().enumerate() {
        if list.width == 0 {
            continue;
        }
        let u = ring::unmasker(owner, n);
        let req = plan.mask_sum_request(owner, list.len);
        t.received[u].push(Inbound::MaskSum(req.clone()));
        if let MaskShare::Sealed(s) = nodes[u].mask_sum(&req)? {
            t.sealed[owner] = Some(s);
        }
    }
    let recipient = party_index(analysis, &analysis.recipient)?;
    let delivery = plan.delivery(t.sealed.clone());
    t.received[recipient].push(Inbound::Deliver(delivery.clone()));
    let release = nodes[recipient].unmask_release(&delivery)?;
    Ok(SimulationOutcome {
        release,
        matched: plan.matched,
        transcript: t,
    })
}
