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
