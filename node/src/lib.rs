//! # cleanroom-node
//!
//! A bank's node: it keeps the bank's tables local (DataFusion), accepts only
//! analyses the bank approved by hash, only coordinators its config
//! authorizes (mutual TLS), and serves the protocol steps of the core crate
//! over gRPC. The `cleanroom-node` binary is a thin CLI over [`cli`].

use std::path::{Path, PathBuf};

use thiserror::Error;

pub mod cli;
pub mod clock;
pub mod config;
pub mod data;
pub mod server;
pub mod service;
pub mod state;
pub mod tls;

pub use config::NodeConfig;
pub use server::{RunningNode, spawn, spawn_with_clock};
pub use state::StateDir;

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
    /// The session id was used before.
    #[error("session id {0} was already used at this node")]
    SessionReused(String),
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
