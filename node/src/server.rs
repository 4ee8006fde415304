//! Starting a node's gRPC server (mutual TLS) in-process or from the CLI.

use std::net::SocketAddr;
use std::sync::Arc;

use cleanroom_proto::v1::node_server::NodeServer;
use cleanroom_proto::{KEEPALIVE, KEEPALIVE_TIMEOUT, MAX_MESSAGE_BYTES};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use crate::clock::{Clock, SystemClock};
use crate::service::NodeService;
use crate::tls::TlsMaterial;
use crate::wiretap::{TapLayer, WireTap};
use crate::{NodeConfig, NodeError};

/// How long a shutdown waits for calls in flight.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a serving node looks for expired sessions.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The connections a node accepts on `listener`, with `TCP_NODELAY` (a
/// small answer is sent at once, not held back by Nagle's algorithm until
/// the peer's delayed acknowledgement, up to 40 ms on Linux) and TCP
/// keepalive. A server given its own listener applies neither of its
/// builder's TCP settings, so they are set here.
pub fn accept(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE))
        .with_keepalive_interval(Some(KEEPALIVE))
}

/// A node serving in the background. Dropping it does not stop it; call
/// [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    /// The bound address (useful when the config asked for port 0).
    pub addr: SocketAddr,
    /// The service (to inspect open sessions in tests).
    pub service: NodeService,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
    health: HealthReporter,
}

impl RunningNode {
    /// Stops the server gracefully: the health service reports NOT_SERVING,
    /// every open session is aborted (secrets dropped, abort recorded,
    /// nothing released), calls in flight end (they find their session
    /// closed), and the server stops accepting; it waits up to
    /// [`SHUTDOWN_GRACE`] for calls in flight, then drops them.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.health
            .set_not_serving::<NodeServer<NodeService>>()
            .await;
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.sweeper.abort();
        let service = self.service.clone();
        let aborted = tokio::task::spawn_blocking(move || service.abort_all_sessions())
            .await
            .map_err(|e| NodeError::Transport(e.to_string()))?;
        if aborted > 0 {
            tracing::warn!(aborted, "shutdown: open sessions aborted");
        }
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(r) => r
                .map_err(|e| NodeError::Transport(e.to_string()))?
                .map_err(|e| NodeError::Transport(e.to_string())),
            Err(_) => {
                task.abort();
                Ok(())
            }
        }
    }
}

/// Loads everything the node needs, binds `config.listen` and serves in a
/// background task.
pub async fn spawn(config: NodeConfig) -> Result<RunningNode, NodeError> {
    spawn_with_clock(config, SystemClock::shared()).await
}

/// [`spawn`] with a given clock (session expiry).
pub async fn spawn_with_clock(
    config: NodeConfig,
    clock: Arc<dyn Clock>,
) -> Result<RunningNode, NodeError> {
    spawn_with(config, ServeOptions { clock, tap: None }).await
}

/// How to serve, beyond the config.
#[derive(Clone)]
pub struct ServeOptions {
    /// The clock (session expiry, analysis expiry, audit times).
    pub clock: Arc<dyn Clock>,
    /// A wire tap receiving every call's bodies (transcript tests).
    pub tap: Option<Arc<dyn WireTap>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            clock: SystemClock::shared(),
            tap: None,
        }
    }
}

/// [`spawn`] with options.
pub async fn spawn_with(config: NodeConfig, opts: ServeOptions) -> Result<RunningNode, NodeError> {
    let clock = opts.clock;
    let tls = TlsMaterial::load(&config.tls.cert, &config.tls.key, &config.tls.ca)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| NodeError::Transport(format!("bind {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    let service = NodeService::new(config, clock).await?;
    // The standard gRPC health service (grpc.health.v1) for deployment
    // probes, behind the same mutual TLS: "" and "cleanroom.v1.Node".
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<NodeServer<NodeService>>().await;
    let svc = NodeServer::new(service.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let router = Server::builder()
        // Dead coordinators and half-open connections are noticed even
        // when no call is in flight (TCP keepalive: see `accept`).
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tls_config(tls.server_config())
        .map_err(|e| NodeError::Tls(e.to_string()))?
        .layer(TapLayer(opts.tap))
        .add_service(health_service)
        .add_service(svc);
    // Expire idle sessions even when no request arrives (a coordinator that
    // vanished mid-run): their secrets are dropped and the expiry recorded.
    let sweeper = tokio::spawn({
        let service = service.clone();
        async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = service.clone();
                // The expiry writes audit records: off the async workers.
                let _ = tokio::task::spawn_blocking(move || s.expire_sessions()).await;
            }
        }
    });
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(accept(listener), async {
                let _ = rx.await;
            })
            .await
    });
    Ok(RunningNode {
        addr,
        service,
        stop,
        task,
        sweeper,
        health,
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// Accepted connections send small answers at once (no Nagle delay).
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = accept(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
