//! What the node-message targets share: a party's session of a three-party
//! analysis.

use cleanroom::protocol::{NodeSession, PeerKeys};
use cleanroom::share::IdentityKey;
use cleanroom::{Analysis, SessionId};

/// Party `name`'s session of `analysis` (parties a, b, c in that order,
/// with fixed identity keys and sid).
pub fn session(analysis: &str, name: &str) -> NodeSession {
    let analysis = Analysis::parse(analysis).unwrap();
    let ids: Vec<IdentityKey> = (1..=3u8)
        .map(|i| IdentityKey::from_bytes([i; 32]).unwrap())
        .collect();
    let peers: PeerKeys = ["a", "b", "c"]
        .iter()
        .zip(&ids)
        .map(|(n, k)| (n.to_string(), k.public()))
        .collect();
    let me = ["a", "b", "c"].iter().position(|n| *n == name).unwrap();
    let sid = SessionId::from_slice(&[7; 32]).unwrap();
    NodeSession::new(
        &analysis,
        sid,
        name,
        &ids[me],
        &peers,
        &mut cleanroom::session::os_rng(),
    )
    .unwrap()
}
