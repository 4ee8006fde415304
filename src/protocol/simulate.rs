//! The whole protocol in memory: every party's [`NodeSession`] and the
//! coordinator steps, wired directly. This is the reference the gRPC run must
//! agree with, and what the property tests and benchmarks exercise.

use std::collections::BTreeMap;

use rand::CryptoRng;

use super::{
    Delivery, MaskShare, NodeSession, PeerKeys, ProtocolError, Release, Row, party_index,
    plan_release, ring,
};
use crate::analysis::Analysis;
use crate::session::SessionId;
use crate::share::IdentityKey;

/// The release and, for tests only, the true match count.
#[derive(Debug, Clone)]
pub struct SimulationOutcome {
    /// What the recipient's node would store.
    pub release: Release,
    /// The exact number of matched keys (known to the coordinator).
    pub matched: u64,
}

/// Runs steps 2–6 for all parties of `analysis` on `inputs` (rows per party
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

    // Step 2: local step.
    let mut lists = Vec::with_capacity(n);
    for (i, node) in nodes.iter().enumerate() {
        let rows = inputs
            .get(names[i])
            .cloned()
            .ok_or_else(|| ProtocolError::UnknownParty(names[i].to_string()))?;
        lists.push(node.prepare(rows, rng)?);
    }
    // Step 3: the blinding ring.
    let mut finals = Vec::with_capacity(n);
    for (owner, list) in lists.iter().enumerate() {
        let mut points = list.points.clone();
        for hop in ring::route(owner, n) {
            points = nodes[hop].reblind(owner, &points)?;
        }
        finals.push(points);
    }
    // Steps 4–6 on the coordinator: match, DP dummies, sums, release policy.
    let plan = plan_release(analysis, &lists, &finals, rng)?;
    // Mask sums (only once the coordinator has decided to release), then
    // unmasking at the recipient.
    let mut sealed = vec![None; n];
    for (owner, list) in lists.iter().enumerate() {
        if list.width == 0 {
            continue;
        }
        let u = ring::unmasker(owner, n);
        if let MaskShare::Sealed(s) = nodes[u].mask_sum(owner, &plan.positions[owner], list.len)? {
            sealed[owner] = Some(s);
        }
    }
    let recipient = party_index(analysis, &analysis.recipient)?;
    let release = nodes[recipient].unmask_release(&Delivery {
        count: plan.count,
        sums: plan.sums,
        sealed,
    })?;
    Ok(SimulationOutcome {
        release,
        matched: plan.matched,
    })
}
