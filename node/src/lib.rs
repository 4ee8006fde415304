//! # cleanroom-node
//!
//! A bank's node: it keeps the bank's tables local (DataFusion), accepts only
//! analyses the bank approved by hash, only coordinators its config
//! authorizes (mutual TLS) and within their [`policy`], debits their privacy
//! budget before any data is read, keeps a hash-chained [`audit`] log in its
//! [`store`], and serves the protocol steps of the core crate over gRPC.
//! The `cleanroom-node` binary is a thin CLI over [`cli`].
//!
//! No `unwrap`/`expect` outside tests (clippy denies them): every input from
//! the network or a file ends in a typed error. The few `expect`s left state
//! invariants of this code, each allowed where it stands with its reason.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::{Path, PathBuf};

use thiserror::Error;

pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod data;
pub mod delta;
pub mod engine;
pub mod policy;
pub mod server;
pub mod service;
pub mod spark;
pub mod store;
pub mod tls;
pub mod wiretap;

pub use config::NodeConfig;
pub use server::{RunningNode, ServeOptions, spawn, spawn_with, spawn_with_clock};
pub use store::Store;

/// Node errors.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (shown in the message, not chained, to print it once).
        cause: std::io::Error,
    },
    /// The config file is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The analysis file is invalid.
    #[error(transparent)]
    Analysis(#[from] cleanroom::AnalysisError),
    /// The analysis does not name this node as a party.
    #[error("this node ({0}) is not a party of the analysis")]
    NotAParty(String),
    /// The analysis hash is not approved at this node.
    #[error("analysis {0} is not approved at this node (run `cleanroom-node approve`)")]
    NotApproved(String),
    /// The approval of the analysis was revoked.
    #[error("analysis {0} was approved at this node but its approval is revoked")]
    Revoked(String),
    /// The analysis's `expires` date has passed.
    #[error("analysis {hash} expired on {date}")]
    Expired {
        /// Analysis hash.
        hash: String,
        /// Its `expires` date.
        date: String,
    },
    /// The node's policy for the calling coordinator refuses the run.
    #[error(transparent)]
    Policy(#[from] policy::Refusal),
    /// The config pins no identity key for a party of the analysis.
    #[error("no pinned identity public key for peer {0:?} in this node's config")]
    MissingPeerKey(String),
    /// The node's database failed.
    #[error("state database: {0}")]
    Store(String),
    /// The session id was used before.
    #[error("session id {0} was already used at this node")]
    SessionReused(String),
    /// The session ended (aborted, expired, node shutting down) before its
    /// result could be stored; nothing was stored.
    #[error("session {0} ended before its result was stored; nothing released")]
    SessionEnded(String),
    /// No stored result for that session.
    #[error("no stored result for session {0}")]
    NoResult(String),
    /// Certificates or TLS configuration.
    #[error("tls: {0}")]
    Tls(String),
    /// Local data or query.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// gRPC transport.
    #[error("transport: {0}")]
    Transport(String),
}

impl NodeError {
    pub(crate) fn io(path: &Path, cause: std::io::Error) -> Self {
        NodeError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}
