//! A wire tap on the node's gRPC server: a tower layer that hands a copy of
//! every call's request body (what the node received) and response body
//! (what the coordinator received) to a [`WireTap`]. Off unless a tap is
//! passed to [`crate::server::spawn_with`]; transcript tests use it to check
//! what each party receives, byte for byte as it crossed the wire.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tower::{Layer, Service};

/// Receives copies of gRPC call bodies.
pub trait WireTap: Send + Sync + 'static {
    /// `path` is the gRPC method (`/cleanroom.v1.Node/Setup`); `inbound` is
    /// true for the request body (what the node received) and false for the
    /// response body (what the caller received); `bytes` is the whole body
    /// in that direction: gRPC length-prefixed messages.
    fn record(&self, path: &str, inbound: bool, bytes: Vec<u8>);
}

/// The layer installed on the node's server.
#[derive(Clone, Default)]
pub struct TapLayer(pub Option<Arc<dyn WireTap>>);

impl<S> Layer<S> for TapLayer {
    type Service = TapService<S>;
    fn layer(&self, inner: S) -> TapService<S> {
        TapService {
            inner,
            tap: self.0.clone(),
        }
    }
}

/// The service the layer wraps around the node's routes.
#[derive(Clone)]
pub struct TapService<S> {
    inner: S,
    tap: Option<Arc<dyn WireTap>>,
}

impl<S> Service<http::Request<Body>> for TapService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(tap) = self.tap.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let path = req.uri().path().to_string();
        let req = req.map(|b| Body::new(Tapped::new(b, tap.clone(), path.clone(), true)));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|b| Body::new(Tapped::new(b, tap, path, false))))
        })
    }
}

/// A body that copies its data frames and hands them to the tap when it is
/// dropped (at the end of the call, or when the call is cut short).
struct Tapped {
    inner: Body,
    buf: Vec<u8>,
    tap: Arc<dyn WireTap>,
    path: String,
    inbound: bool,
}

impl Tapped {
    fn new(inner: Body, tap: Arc<dyn WireTap>, path: String, inbound: bool) -> Self {
        Tapped {
            inner,
            buf: Vec::new(),
            tap,
            path,
            inbound,
        }
    }
}

impl HttpBody for Tapped {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let out = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &out
            && let Some(d) = f.data_ref()
        {
            this.buf.extend_from_slice(d);
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        self.tap
            .record(&self.path, self.inbound, std::mem::take(&mut self.buf));
    }
}

/// Splits a gRPC body into its messages (length-prefixed, uncompressed).
pub fn grpc_messages(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        out.push(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    out
}
