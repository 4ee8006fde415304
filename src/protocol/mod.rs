//! The protocol steps of DESIGN.md, free of I/O.
//!
//! Node side ([`NodeSession`]): the local step (shuffle, pad, blind, mask),
//! re-blinding other lists, summing masks for the predecessor's list, and, at
//! the recipient, unmasking the release. Coordinator side: the blinding
//! [`ring`] schedule, [`matching`], masked sums and DP noise ([`aggregate`]).
//! [`group`] lays out grouped results (one masked vector per group).
//! [`encode`] puts the matching protocol (`[protocol] psi`: ecdh-ring or
//! keyed-prf) behind one interface; everything else is shared.
//! [`simulate`] runs all of it in memory; the gRPC node and coordinator call
//! the very same functions, only moving the bytes over the network.
//!
//! Parties are indexed in ring order (sorted by name, as in
//! [`Analysis::parties`]). The unmasker of list `i` is party `i + 1 mod n`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::analysis::Analysis;
use crate::dp::DpError;
use crate::positions::{Positions, PositionsError};
use crate::psi::PsiError;
use crate::share::ShareError;

pub mod aggregate;
pub mod encode;
pub mod group;
pub mod local;
pub mod matching;
pub mod node;
pub mod repeats;
pub mod ring;
pub mod simulate;

pub use aggregate::{
    Delivery, ReleasePlan, add_dummy_positions, draw_count_noise, plan_release,
    sealed_mask_sum_len, sum_masked,
};
pub use group::Layout;
pub use local::{ListBuilder, RowBatch, ShuffledList};
pub use matching::{FinalList, Matches, Split, match_finals, match_lists};
pub use node::{MaskShare, MaskedList, NodeSession, PeerKeys, PreparedList, ReblindStream};
pub use repeats::any_repeat;
pub use simulate::{Inbound, SimulationOutcome, Transcript, simulate, simulate_streaming};

/// Most rows a list may have, padding and dummies included. Every size a
/// peer declares is checked against it before anything is allocated or
/// multiplied.
pub const MAX_LIST_ROWS: u64 = 1 << 28;

/// One row of a party's local query result: an encoded key and its features
/// (in the order of [`Analysis::features`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Canonical key encoding (see [`crate::keys`]).
    pub key: Vec<u8>,
    /// Non-negative integer features.
    pub features: Vec<u64>,
    /// The row's group (index into the declared groups), for the grouping
    /// party of a grouped analysis; `None` everywhere else.
    pub group: Option<u32>,
}

impl Row {
    /// An ungrouped row.
    pub fn new(key: Vec<u8>, features: Vec<u64>) -> Self {
        Row {
            key,
            features,
            group: None,
        }
    }
}

/// What the coordinator asks of a list's unmasker (step 5).
///
/// The receiver learns the number of positions (the match count, noisy under
/// DP) and the length of the list; positions index a list shuffled afresh
/// for this session, and `pad` is uniform and independent of everything
/// else, so neither says which keys matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskSumRequest {
    /// Ring index of the list's owner.
    pub owner: usize,
    /// Rows of that list, padding and dummies included.
    pub list_len: u64,
    /// keyed-prf only: the owner's tag on `list_len` for this node (under
    /// ecdh-ring the length arrived authenticated with the re-blind stream,
    /// and this is empty). Pseudorandom to the receiver but for verifying.
    pub length_tag: Vec<u8>,
    /// Matched positions (plus DP dummy positions) of the list, as a set
    /// over its `list_len` rows (on the wire: a bitmap of the list).
    pub positions: Positions,
    /// The coordinator's one-time pad `r_i`, one word per masked slot: the
    /// unmasker returns `M_i + r_i`, so the recipient never sees `M_i` or
    /// `Y_i` alone (DESIGN step 5).
    pub pad: Vec<u64>,
}

/// Protocol failures. Nothing is released after any of them.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// A point list was malformed.
    #[error(transparent)]
    Psi(#[from] PsiError),
    /// Masking, key handling or sealing failed.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// A position set was malformed (step 5).
    #[error(transparent)]
    Positions(#[from] PositionsError),
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
    /// Too few keys matched to release anything. Carries no number: the
    /// count is what `min_matched` exists to withhold.
    #[error("too few keys matched to release anything (below the analysis's min_matched)")]
    TooFewMatches,
    /// A row of a grouped analysis lacks a valid group, or an ungrouped row
    /// has one.
    #[error("party {party:?}: row has no group of the analysis's declared groups")]
    BadGroup {
        /// The party.
        party: String,
    },
    /// A list would exceed [`MAX_LIST_ROWS`].
    #[error("party {party:?}: list exceeds {MAX_LIST_ROWS} rows (padding and groups included)")]
    ListTooLong {
        /// The party.
        party: String,
    },
    /// A final list contains the same point twice.
    #[error("list of {0:?} contains a repeated point")]
    RepeatedPoint(String),
    /// A list length did not come with its owner's valid tag.
    #[error("the length of {0:?}'s list is not authenticated by its owner")]
    UnauthenticatedLength(String),
    /// A chunk of points did not come with a valid tag from the node that
    /// produced it (the list's owner or the previous hop): the coordinator
    /// altered, replaced, reordered or inserted points.
    #[error(
        "the points of {owner:?}'s list from position {offset} are not authenticated by the node that sent them"
    )]
    UnauthenticatedChunk {
        /// The list's owner.
        owner: String,
        /// List position of the chunk's first point.
        offset: u64,
    },
    /// A point to re-blind is not a canonical Ristretto encoding, or is the
    /// identity.
    #[error(
        "point at position {0} of the list is not a canonical, non-identity Ristretto encoding"
    )]
    InvalidPoint(u64),
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
    /// `party.column` the results are grouped by, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// One row per declared group, in declared order (a single row without
    /// grouping).
    pub rows: Vec<ReleaseRow>,
}

/// The released numbers of one group (or of the whole run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRow {
    /// The group's label; `None` without grouping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The group's (noisy) count fell below `min_matched`: nothing of it is
    /// released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppressed: bool,
    /// Released values, in the analysis's aggregate order (empty when
    /// suppressed).
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

impl ReleaseRow {
    /// The value of an aggregate by label.
    pub fn get(&self, aggregate: &str) -> Option<i64> {
        self.values
            .iter()
            .find(|v| v.aggregate == aggregate)
            .map(|v| v.value)
    }
}

impl Release {
    /// The value of an aggregate by label, in an ungrouped release.
    pub fn get(&self, aggregate: &str) -> Option<i64> {
        match self.rows.as_slice() {
            [row] if row.group.is_none() => row.get(aggregate),
            _ => None,
        }
    }

    /// The row of a group by label.
    pub fn group(&self, label: &str) -> Option<&ReleaseRow> {
        self.rows.iter().find(|r| r.group.as_deref() == Some(label))
    }
}

/// Ring-order index of a party.
pub fn party_index(analysis: &Analysis, name: &str) -> Result<usize, ProtocolError> {
    analysis
        .party_index(name)
        .ok_or_else(|| ProtocolError::UnknownParty(name.to_string()))
}
