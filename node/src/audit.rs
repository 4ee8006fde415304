//! The node's audit log: one record per setup, refusal, step, release,
//! abort, expiry and approval change, hash-chained so that an edited,
//! dropped, inserted or reordered record is detected and named.
//!
//! Record `k` stores `hash_k = SHA-256("cleanroom/audit/v1\n" || k (u64 BE)
//! || hash_{k-1} || json_k)`, with `hash_0` all zeros and `json_k` the exact
//! JSON text stored. Records never hold values, keys or counts of matched
//! rows: only times, ids, names, list sizes, aggregate names, the privacy
//! cost debited and outcomes. Removing records from the end cannot be seen
//! from the chain alone: `audit verify` prints the head (last sequence number
//! and hash) for the compliance officer to keep outside the node, and
//! `--head` checks a kept head is still part of the chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// An analysis was approved at this node.
    Approve,
    /// An approval was revoked.
    Revoke,
    /// The state directory was migrated from loose files.
    Migrate,
    /// A coordinator opened a session.
    Setup,
    /// A setup or step was refused.
    Refused,
    /// The privacy budget was debited (before any data is read).
    Debit,
    /// The local query ran and the blinded, masked list was sent.
    LocalStep,
    /// Another party's list was re-blinded.
    Reblind,
    /// The mask sum of the predecessor's list was computed and sent.
    MaskSum,
    /// The result was unmasked and stored (recipient only).
    Release,
    /// The coordinator ended the session normally.
    Finish,
    /// The coordinator aborted the session.
    Abort,
    /// The session expired unfinished.
    Expire,
    /// A step failed at this node.
    Failed,
}

/// One audit record (without its chain fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339 UTC time.
    pub time: String,
    /// What happened.
    pub event: Event,
    /// Session id (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Analysis hash (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_hash: Option<String>,
    /// Analysis name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<String>,
    /// Certificate identity of the coordinator (or `local operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// Rows of the list this step handled (own list, padded, at the local
    /// step; another party's list at a re-blind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_rows: Option<u64>,
    /// Every configured Delta table, table → the version the step pinned
    /// (the local step opens all configured tables), so a result can be
    /// reproduced with a time-travel read.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub table_versions: std::collections::BTreeMap<String, u64>,
    /// Aggregates released (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<String>,
    /// Epsilon debited by this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Delta debited by this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Outcome or reason class (`ok`, or why not); never values.
    pub outcome: String,
}

impl Record {
    /// A record of `event` at `time` with outcome `ok` and nothing else set.
    pub fn new(event: Event, time: String) -> Self {
        Record {
            time,
            event,
            sid: None,
            analysis_hash: None,
            analysis: None,
            coordinator: None,
            list_rows: None,
            table_versions: Default::default(),
            aggregates: Vec::new(),
            epsilon: None,
            delta: None,
            outcome: "ok".into(),
        }
    }
}

/// A record as stored: sequence number, JSON text and chain hashes (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The record's JSON, exactly as hashed.
    pub json: String,
    /// Hash of the previous record (hex; zeros for the first).
    pub prev_hash: String,
    /// Hash of this record (hex).
    pub hash: String,
}

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// The chain hash of record `seq` with text `json` after `prev`.
pub fn chain_hash(seq: u64, prev: &[u8; 32], json: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cleanroom/audit/v1\n");
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(json.as_bytes());
    h.finalize().into()
}

/// Why a chain does not verify. Each names the first bad record.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuditError {
    /// A record's content does not match its hash.
    #[error("audit record {0} was edited: its content does not match its hash")]
    Edited(u64),
    /// Sequence numbers jump: records are missing.
    #[error("audit records {from} to {to} are missing (dropped)")]
    Missing {
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number.
        to: u64,
    },
    /// A record does not link to its predecessor.
    #[error(
        "audit record {0} does not follow record {prev}: a record was inserted, dropped or reordered",
        prev = .0 - 1
    )]
    Unlinked(u64),
    /// A sequence number repeats or goes backwards.
    #[error("audit record {0} is out of order")]
    OutOfOrder(u64),
    /// A record's text is not a valid record.
    #[error("audit record {0} is not a valid record")]
    Malformed(u64),
    /// A head kept from an earlier verification is no longer in the chain.
    #[error(
        "the chain no longer contains the head {seq}:{hash} kept earlier (records were removed or rewritten)"
    )]
    HeadMismatch {
        /// Kept sequence number.
        seq: u64,
        /// Kept hash (hex).
        hash: String,
    },
}

/// Checks a whole chain, in stored order; returns the head (last sequence
/// number and hash) of a valid chain, `(0, zeros)` when empty.
pub fn verify(records: &[Stored]) -> Result<(u64, String), AuditError> {
    let mut prev = GENESIS;
    let mut expected = 1u64;
    for r in records {
        if r.seq < expected {
            return Err(AuditError::OutOfOrder(r.seq));
        }
        if r.seq > expected {
            return Err(AuditError::Missing {
                from: expected,
                to: r.seq - 1,
            });
        }
        if serde_json::from_str::<Record>(&r.json).is_err() {
            return Err(AuditError::Malformed(r.seq));
        }
        let stated_prev = decode(&r.prev_hash).ok_or(AuditError::Malformed(r.seq))?;
        let stated = decode(&r.hash).ok_or(AuditError::Malformed(r.seq))?;
        if chain_hash(r.seq, &stated_prev, &r.json) != stated {
            return Err(AuditError::Edited(r.seq));
        }
        if stated_prev != prev {
            return Err(AuditError::Unlinked(r.seq));
        }
        prev = stated;
        expected += 1;
    }
    Ok((expected - 1, hex::encode(prev)))
}

/// Checks that a head `seq:hash` kept earlier is still in the chain.
pub fn check_head(records: &[Stored], seq: u64, hash: &str) -> Result<(), AuditError> {
    let ok = records
        .iter()
        .any(|r| r.seq == seq && r.hash.eq_ignore_ascii_case(hash.trim()));
    if ok {
        Ok(())
    } else {
        Err(AuditError::HeadMismatch {
            seq,
            hash: hash.to_string(),
        })
    }
}

fn decode(h: &str) -> Option<[u8; 32]> {
    hex::decode(h).ok()?.try_into().ok()
}

/// Builds a chain from records (tests and tools).
pub fn chain(records: &[Record]) -> Vec<Stored> {
    let mut prev = GENESIS;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let seq = i as u64 + 1;
            #[allow(
                clippy::expect_used,
                reason = "a Record (strings, integers, floats) always serializes"
            )]
            let json = serde_json::to_string(r).expect("records serialize");
            let hash = chain_hash(seq, &prev, &json);
            let s = Stored {
                seq,
                json,
                prev_hash: hex::encode(prev),
                hash: hex::encode(hash),
            };
            prev = hash;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<Stored> {
        chain(
            &(0..n)
                .map(|i| {
                    let mut r = Record::new(Event::Setup, format!("2026-11-25T00:00:0{i}Z"));
                    r.sid = Some(format!("{i:064x}"));
                    r
                })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = records(4);
        assert_eq!(verify(&c).unwrap(), (4, c[3].hash.clone()));
        assert_eq!(verify(&[]).unwrap().0, 0);
        check_head(&c, 2, &c[1].hash).unwrap();
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let c = records(5);
        // Edited content.
        let mut t = c.clone();
        t[2].json = t[2]
            .json
            .replace("Setup", "Release")
            .replace("setup", "release");
        assert_eq!(verify(&t), Err(AuditError::Edited(3)));
        // Dropped record.
        let mut t = c.clone();
        t.remove(1);
        assert_eq!(verify(&t), Err(AuditError::Missing { from: 2, to: 2 }));
        // Dropped and renumbered (hashes recomputed for the new numbers).
        let mut t = c.clone();
        t.remove(1);
        for r in &mut t[1..] {
            r.seq -= 1;
            let prev = decode(&r.prev_hash).unwrap();
            r.hash = hex::encode(chain_hash(r.seq, &prev, &r.json));
        }
        assert_eq!(verify(&t), Err(AuditError::Unlinked(2)));
        // Inserted record (a forged one, hashed as if it belonged there).
        let mut t = c.clone();
        let forged = Record::new(Event::Release, "2026-11-25T00:00:09Z".into());
        let json = serde_json::to_string(&forged).unwrap();
        let prev = decode(&t[1].hash).unwrap();
        t.insert(
            2,
            Stored {
                seq: 3,
                hash: hex::encode(chain_hash(3, &prev, &json)),
                json,
                prev_hash: t[1].hash.clone(),
            },
        );
        for r in &mut t[3..] {
            r.seq += 1;
        }
        assert!(
            matches!(verify(&t), Err(AuditError::Edited(4))),
            "{:?}",
            verify(&t)
        );
        // Reordered records (sequence numbers kept in place).
        let mut t = c.clone();
        let (a, b) = (t[1].clone(), t[2].clone());
        t[1] = Stored { seq: 2, ..b };
        t[2] = Stored { seq: 3, ..a };
        assert_eq!(verify(&t), Err(AuditError::Edited(2)));
        // A removed tail is caught by a kept head.
        let kept = c[4].hash.clone();
        assert!(verify(&c[..3]).is_ok());
        assert!(matches!(
            check_head(&c[..3], 5, &kept),
            Err(AuditError::HeadMismatch { seq: 5, .. })
        ));
    }
}
