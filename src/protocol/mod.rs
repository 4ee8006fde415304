//! The protocol steps of DESIGN.md, free of I/O.
//!
//! Node side ([`NodeSession`]): the local step (shuffle, pad, blind, mask),
//! re-blinding other lists, summing masks for the predecessor's list, and, at
//! the recipient, unmasking the release. Coordinator side: the blinding
//! [`ring`] schedule, [`matching`], masked sums and DP noise ([`aggregate`]).
//! [`simulate`] runs all of it in memory; the gRPC node and coordinator call
//! the very same functions, only moving the bytes over the network.
//!
//! Parties are indexed in ring order (sorted by name, as in
//! [`Analysis::parties`]). The unmasker of list `i` is party `i + 1 mod n`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::analysis::Analysis;
use crate::dp::DpError;
use crate::psi::PsiError;
use crate::share::ShareError;

pub mod aggregate;
pub mod matching;
pub mod node;
pub mod ring;
pub mod simulate;

pub use aggregate::{
    Delivery, ReleasePlan, add_dummy_positions, noisy_release, plan_release, sum_masked,
};
pub use matching::{Matches, match_lists};
pub use node::{MaskShare, NodeSession, PeerKeys, PreparedList};
pub use simulate::{SimulationOutcome, simulate};

/// One row of a party's local query result: an encoded key and its features
/// (in the order of [`Analysis::features`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Canonical key encoding (see [`crate::keys`]).
    pub key: Vec<u8>,
    /// Non-negative integer features.
    pub features: Vec<u64>,
}

/// Protocol failures. Nothing is released after any of them.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// A point list was malformed.
    #[error(transparent)]
    Psi(#[from] PsiError),
    /// Masking, positions or sealing failed.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// Noise parameters were invalid.
    #[error(transparent)]
    Dp(#[from] DpError),
    /// The party is not part of the analysis.
    #[error("party {0:?} is not part of the analysis")]
    UnknownParty(String),
    /// No pinned public key for a peer this node must derive a seed with.
    #[error("no pinned identity public key for peer {0:?}")]
    MissingPeerKey(String),
    /// A key occurs twice in one party's rows (the query must GROUP BY key).
    #[error("party {party:?}: duplicate join key in local result (GROUP BY the key)")]
    DuplicateKey {
        /// The party.
        party: String,
    },
    /// A row has the wrong number of features.
    #[error("party {party:?}: row has {got} features, analysis needs {expected}")]
    WidthMismatch {
        /// The party.
        party: String,
        /// Features the analysis needs.
        expected: usize,
        /// Features in the row.
        got: usize,
    },
    /// A feature column's total would not fit a signed 64-bit release.
    #[error(
        "party {party:?}: column {column:?} sums to 2^63 or more; released sums must fit in i64"
    )]
    SumTooLarge {
        /// The party.
        party: String,
        /// The column.
        column: String,
    },
    /// Too few keys matched to release anything.
    #[error("only {matched} keys matched (noisy under DP); the analysis requires at least {min}")]
    TooFewMatches {
        /// Matched (possibly noisy) count.
        matched: i64,
        /// Required minimum.
        min: u64,
    },
    /// A final list contains the same point twice.
    #[error("list of {0:?} contains a repeated point")]
    RepeatedPoint(String),
    /// A message does not fit the session (wrong list, wrong role, wrong size).
    #[error("protocol violation: {0}")]
    Violation(String),
}

/// What the recipient's node stores and prints: the released numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Analysis name.
    pub analysis: String,
    /// Analysis hash (hex).
    pub analysis_hash: String,
    /// Session id (hex).
    pub sid: String,
    /// Whether DP noise was added to every value.
    pub noisy: bool,
    /// Released values, in the analysis's aggregate order.
    pub values: Vec<ReleasedValue>,
}

/// One released number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedValue {
    /// Aggregate label as written in the analysis (`count`, `sum(p.c)`).
    pub aggregate: String,
    /// The value (noisy under DP, and then possibly negative).
    pub value: i64,
}

impl Release {
    /// The value of an aggregate by label.
    pub fn get(&self, aggregate: &str) -> Option<i64> {
        self.values
            .iter()
            .find(|v| v.aggregate == aggregate)
            .map(|v| v.value)
    }
}

/// Ring-order index of a party.
pub fn party_index(analysis: &Analysis, name: &str) -> Result<usize, ProtocolError> {
    analysis
        .party_index(name)
        .ok_or_else(|| ProtocolError::UnknownParty(name.to_string()))
}
