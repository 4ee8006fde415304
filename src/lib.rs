//! # cleanroom core
//!
//! Everything the cleanroom protocol needs that is not networking: the
//! cryptographic building blocks and the I/O-free protocol steps that both the
//! in-memory simulation and the gRPC services drive. See `DESIGN.md` in the
//! shared design folder for the protocol, and the README for the threat model.
//!
//! | module | job |
//! |---|---|
//! | [`session`] | session ids and the random source used for secrets |
//! | [`keys`] | canonical join-key encoding (strings NFC, integers big-endian, tuples length-prefixed) |
//! | [`psi`] | hash-to-Ristretto, per-session blinding, re-blinding, truncation |
//! | [`prf`] | keyed-prf matching: the group key, its sealing, keyed tags |
//! | [`share`] | identity keys, pairwise seeds, PRG masks, sealing of mask sums |
//! | [`positions`] | the rows of a list summed in step 5, as a bitmap of the list (its wire form parsed strictly) |
//! | [`dp`] | exact discrete Laplace and discrete Gaussian samplers |
//! | [`analysis`] | the analysis file format, validation and its approval hash |
//! | [`protocol`] | the protocol steps (node and coordinator side) and the in-memory run |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod analysis;
pub mod dp;
pub mod keys;
pub mod positions;
pub mod prf;
pub mod protocol;
pub mod psi;
pub mod session;
pub mod share;

pub use analysis::{Analysis, AnalysisError, AnalysisHash, Psi};
pub use session::SessionId;
