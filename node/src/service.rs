//! The node's gRPC service: authorizes the caller, checks every message
//! against its session, and drives the core crate's [`NodeSession`].

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cleanroom::protocol::{Delivery, MaskShare, NodeSession, PeerKeys, ProtocolError};
use cleanroom::session::os_rng;
use cleanroom::share::IdentityKey;
use cleanroom::{Analysis, AnalysisHash, SessionId};
use cleanroom_proto::CHUNK_POINTS;
use cleanroom_proto::v1::node_server::Node;
use cleanroom_proto::v1::*;
use datafusion::prelude::SessionContext;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::{NodeConfig, NodeError, StateDir, data, tls};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One live session.
struct Session {
    opened: Duration,
    hash: AnalysisHash,
    analysis: Analysis,
    proto: RwLock<NodeSession>,
    local_done: AtomicBool,
    /// Lists this node has started re-blinding: one stream per list, so the
    /// node cannot be used as a blinding oracle.
    reblinded: Mutex<HashSet<u32>>,
}

/// The gRPC service: a cheap handle on the node's shared state.
#[derive(Clone, Debug)]
pub struct NodeService(Arc<NodeState>);

impl std::ops::Deref for NodeService {
    type Target = NodeState;
    fn deref(&self) -> &NodeState {
        &self.0
    }
}

/// Shared state of a running node.
pub struct NodeState {
    config: NodeConfig,
    state: StateDir,
    ctx: SessionContext,
    identity: IdentityKey,
    peers: PeerKeys,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

fn status(e: NodeError) -> Status {
    match e {
        NodeError::NotApproved(_) | NodeError::NotAParty(_) => {
            Status::failed_precondition(e.to_string())
        }
        NodeError::SessionReused(_) => Status::already_exists(e.to_string()),
        NodeError::Analysis(_) => Status::invalid_argument(e.to_string()),
        NodeError::Data(_) => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn proto_status(e: ProtocolError) -> Status {
    match e {
        ProtocolError::TooFewMatches { .. } | ProtocolError::MissingPeerKey(_) => {
            Status::failed_precondition(e.to_string())
        }
        ProtocolError::SumTooLarge { .. }
        | ProtocolError::DuplicateKey { .. }
        | ProtocolError::WidthMismatch { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn parse_ref(r: &Option<SessionRef>) -> Result<(SessionId, AnalysisHash), Status> {
    let r = r
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("missing session reference"))?;
    let sid = SessionId::from_slice(&r.sid)
        .ok_or_else(|| Status::invalid_argument("session id must be 32 bytes"))?;
    let hash = AnalysisHash::from_slice(&r.analysis_hash)
        .ok_or_else(|| Status::invalid_argument("analysis hash must be 32 bytes"))?;
    Ok((sid, hash))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

impl NodeService {
    /// Loads tables, identity and state for `config`.
    pub async fn new(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Self, NodeError> {
        Ok(NodeService(Arc::new(NodeState::load(config, clock).await?)))
    }
}

impl NodeState {
    async fn load(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Self, NodeError> {
        let state = StateDir::open(&config.state_dir)?;
        let ctx = data::load_tables(&config.tables).await?;
        let identity = config.identity()?;
        let peers = config.peer_keys()?;
        Ok(NodeState {
            config,
            state,
            ctx,
            identity,
            peers,
            sessions: Mutex::new(HashMap::new()),
            clock,
        })
    }

    /// The caller's authorized coordinator name, or PermissionDenied.
    fn authorize<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        match tls::authorized_name(leaf, &self.config.authorized_coordinators) {
            Some(name) => Ok(name.to_string()),
            None => {
                warn!("refused a caller whose certificate is not an authorized coordinator");
                Err(Status::permission_denied(
                    "client certificate is not an authorized coordinator",
                ))
            }
        }
    }

    /// Drops sessions older than the configured TTL (their secrets with them).
    fn expire_sessions(&self) {
        let ttl = Duration::from_secs(self.config.session_ttl_secs);
        let now = self.clock.now();
        self.sessions
            .lock()
            .expect("session map poisoned")
            .retain(|sid, s| {
                let keep = now.saturating_sub(s.opened) < ttl;
                if !keep {
                    warn!(%sid, "session expired unfinished; nothing released");
                }
                keep
            });
    }

    fn session(&self, r: &Option<SessionRef>) -> Result<Arc<Session>, Status> {
        let (sid, hash) = parse_ref(r)?;
        self.expire_sessions();
        let s = self
            .sessions
            .lock()
            .expect("session map poisoned")
            .get(&sid)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no open session {sid} (never set up, finished or expired)"
                ))
            })?;
        if s.hash != hash {
            return Err(Status::invalid_argument(
                "analysis hash does not match the session",
            ));
        }
        Ok(s)
    }

    fn setup_session(
        &self,
        sid: SessionId,
        hash: AnalysisHash,
        text: &str,
    ) -> Result<Arc<Session>, Status> {
        let analysis = Analysis::parse(text).map_err(|e| status(e.into()))?;
        if analysis.hash() != hash {
            return Err(Status::invalid_argument(format!(
                "analysis text hashes to {}, not to the announced {hash}",
                analysis.hash()
            )));
        }
        if !self.state.is_approved(&hash) {
            return Err(status(NodeError::NotApproved(hash.to_hex())));
        }
        if analysis.party_index(&self.config.name).is_none() {
            return Err(status(NodeError::NotAParty(self.config.name.clone())));
        }
        self.state.claim_session(&sid).map_err(status)?;
        let proto = NodeSession::new(
            &analysis,
            sid,
            &self.config.name,
            &self.identity,
            &self.peers,
            &mut os_rng(),
        )
        .map_err(proto_status)?;
        Ok(Arc::new(Session {
            opened: self.clock.now(),
            hash,
            analysis,
            proto: RwLock::new(proto),
            local_done: AtomicBool::new(false),
            reblinded: Mutex::new(HashSet::new()),
        }))
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn health(
        &self,
        req: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(HealthResponse {
            party: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn catalog(
        &self,
        req: Request<CatalogRequest>,
    ) -> Result<Response<CatalogResponse>, Status> {
        self.authorize(&req)?;
        let tables = data::catalog(&self.ctx, &self.config.tables)
            .await
            .map_err(|e| status(e.into()))?
            .into_iter()
            .map(|t| Table {
                name: t.name,
                columns: t
                    .columns
                    .into_iter()
                    .map(|(name, data_type)| Column { name, data_type })
                    .collect(),
                approx_rows: t.approx_rows,
            })
            .collect();
        Ok(Response::new(CatalogResponse { tables }))
    }

    async fn setup(&self, req: Request<SetupRequest>) -> Result<Response<SetupResponse>, Status> {
        let who = self.authorize(&req)?;
        let r = req.into_inner();
        let (sid, hash) = parse_ref(&r.session)?;
        self.expire_sessions();
        let result = self.setup_session(sid, hash, &r.analysis_toml);
        match &result {
            Ok(s) => {
                info!(coordinator = %who, %sid, analysis = %s.analysis.name, "session opened");
                self.sessions
                    .lock()
                    .expect("session map poisoned")
                    .insert(sid, s.clone());
            }
            Err(e) => warn!(coordinator = %who, %sid, "setup refused: {}", e.message()),
        }
        result.map(|_| {
            Response::new(SetupResponse {
                party: self.config.name.clone(),
            })
        })
    }

    type LocalStepStream = Stream_<ListChunk>;

    async fn local_step(
        &self,
        req: Request<LocalStepRequest>,
    ) -> Result<Response<Self::LocalStepStream>, Status> {
        self.authorize(&req)?;
        let s = self.session(&req.get_ref().session)?;
        if s.local_done.swap(true, Ordering::SeqCst) {
            return Err(Status::failed_precondition(
                "local step already ran for this session",
            ));
        }
        let rows = data::local_rows(&self.ctx, &s.analysis, &self.config.name)
            .await
            .map_err(|e| status(e.into()))?;
        let s2 = s.clone();
        let list = blocking(move || {
            let proto = s2.proto.read().expect("session lock poisoned");
            proto.prepare(rows, &mut os_rng()).map_err(proto_status)
        })
        .await?;
        let total = list.len;
        let width = list.width;
        let chunks: Vec<Result<ListChunk, Status>> = list
            .points
            .chunks(CHUNK_POINTS * 32)
            .enumerate()
            .map(|(i, pts)| {
                let rows = pts.len() / 32;
                let start = i * CHUNK_POINTS * width;
                Ok(ListChunk {
                    points: pts.to_vec(),
                    masked: list.masked[start..start + rows * width].to_vec(),
                    total_rows: total,
                    dummy_positions: if i == 0 {
                        list.dummies.clone()
                    } else {
                        Vec::new()
                    },
                })
            })
            .collect();
        info!(sid = %s.proto.read().expect("session lock poisoned").sid(), rows = total, "local step done");
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    type ReblindStream = Stream_<PointChunk>;

    async fn reblind(
        &self,
        req: Request<Streaming<ReblindChunk>>,
    ) -> Result<Response<Self::ReblindStream>, Status> {
        self.authorize(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut bound: Option<(Arc<Session>, u32)> = None;
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                let step = async {
                    let s = this.session(&msg.session)?;
                    match &bound {
                        Some((b, owner)) if !Arc::ptr_eq(b, &s) || *owner != msg.owner => {
                            return Err(Status::invalid_argument(
                                "a re-blind stream must carry one list of one session",
                            ));
                        }
                        None => {
                            if !s
                                .reblinded
                                .lock()
                                .expect("session lock poisoned")
                                .insert(msg.owner)
                            {
                                return Err(Status::failed_precondition(
                                    "this list was already re-blinded here",
                                ));
                            }
                            bound = Some((s.clone(), msg.owner))
                        }
                        _ => {}
                    }
                    let points = msg.points;
                    let owner = msg.owner as usize;
                    blocking(move || {
                        let proto = s.proto.read().expect("session lock poisoned");
                        proto.reblind(owner, &points).map_err(proto_status)
                    })
                    .await
                };
                let out = step.await.map(|points| PointChunk { points });
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn mask_sum(
        &self,
        req: Request<MaskSumRequest>,
    ) -> Result<Response<MaskSumResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let s = self.session(&r.session)?;
        let share = blocking(move || {
            let mut proto = s.proto.write().expect("session lock poisoned");
            proto
                .mask_sum(r.owner as usize, &r.positions, r.list_len)
                .map_err(proto_status)
        })
        .await?;
        Ok(Response::new(MaskSumResponse {
            sealed: match share {
                MaskShare::Sealed(b) => b,
                MaskShare::Kept => Vec::new(),
            },
        }))
    }

    async fn deliver(
        &self,
        req: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let s = self.session(&r.session)?;
        let delivery = Delivery {
            count: r.count,
            sums: r.sums.iter().map(|l| l.masked_sum.clone()).collect(),
            sealed: r
                .sums
                .into_iter()
                .map(|l| (!l.sealed_mask_sum.is_empty()).then_some(l.sealed_mask_sum))
                .collect(),
        };
        let release = s
            .proto
            .write()
            .expect("session lock poisoned")
            .unmask_release(&delivery)
            .map_err(proto_status)?;
        let path = self.state.store_result(&release).map_err(status)?;
        // Tell the coordinator where inside the state directory, not the
        // node's file system layout.
        let path = path
            .strip_prefix(&self.config.state_dir)
            .unwrap_or(&path)
            .to_path_buf();
        info!(sid = %release.sid, analysis = %release.analysis, "result stored in the state directory");
        Ok(Response::new(DeliverResponse {
            stored_as: path.display().to_string(),
        }))
    }

    async fn finish(
        &self,
        req: Request<FinishRequest>,
    ) -> Result<Response<FinishResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let (sid, _) = parse_ref(&r.session)?;
        let _ = self.session(&r.session)?;
        self.sessions
            .lock()
            .expect("session map poisoned")
            .remove(&sid);
        if r.aborted {
            warn!(%sid, reason = %r.reason, "session aborted by the coordinator; nothing released");
        } else {
            info!(%sid, "session finished");
        }
        Ok(Response::new(FinishResponse {}))
    }
}
