//! Generated gRPC messages and services of the cleanroom protocol
//! (`proto/cleanroom.proto`), plus the size limits both sides use.
#![allow(missing_docs, clippy::all)]

/// Messages and the `Node` service, package `cleanroom.v1`.
pub mod v1 {
    tonic::include_proto!("cleanroom.v1");
}

/// Largest gRPC message either side accepts or sends (set explicitly on
/// every server and client).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Points per streamed chunk.
pub const CHUNK_POINTS: usize = 4096;
/// How often a node running its local step sends a heartbeat chunk (a
/// coordinator's stream deadline must be well above it).
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// HTTP/2 keepalive on every connection, both sides: a ping this often; the
/// connection is dropped when one is not answered within
/// [`KEEPALIVE_TIMEOUT`]. A dead or stopped peer is noticed even when no call
/// is in flight.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);
/// See [`KEEPALIVE`].
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
