//! # cleanroom-coordinator
//!
//! Runs one analysis across bank nodes ([`run::run_analysis`]): sets up the
//! session, collects the blinded lists, routes them around the blinding
//! ring, matches, sums the masked features, applies the release policy (and
//! DP noise), and has the recipient's node unmask and store the result. The
//! coordinator itself never holds an unmasked aggregate. [`catalog`] lists
//! what nodes show of their tables; [`demo`] runs the whole thing on
//! synthetic bank data on loopback.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod catalog;
pub mod cli;
pub mod deadline;
pub mod demo;
mod pipeline;
pub mod run;

pub use deadline::Deadlines;
pub use run::{
    CoordinatorError, NodeTarget, PhaseEdge, PhaseHook, RunOptions, RunReport, run_analysis,
};
