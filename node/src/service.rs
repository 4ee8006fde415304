//! The node's gRPC service: authorizes the caller, applies its policy,
//! checks every message against its session, keeps the audit log and the
//! budget ledger, and drives the core crate's [`NodeSession`].
//!
//! What leaves the node in an error: the rule or the column that failed,
//! never a value, a count or the query engine's own text (which may quote
//! data). What the node logs: ids, names, list sizes and error classes.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cleanroom::positions::Positions;
use cleanroom::protocol::ReblindStream as ReblindState;
use cleanroom::protocol::encode;
use cleanroom::protocol::{Delivery, MaskShare, MaskSumRequest as CoreMaskSum, NodeSession};
use cleanroom::protocol::{PeerKeys, ProtocolError, RowBatch, ShuffledList};
use cleanroom::psi::POINT_LEN;
use cleanroom::session::os_rng;
use cleanroom::share::IdentityKey;
use cleanroom::{Analysis, AnalysisHash, Psi, SessionId};
use cleanroom_proto::CHUNK_POINTS;
use cleanroom_proto::v1::node_server::Node;
use cleanroom_proto::v1::*;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use crate::audit::{Event, Record};
use crate::clock::Clock;
use crate::engine::Engine;
use crate::policy::Refusal;
use crate::{NodeConfig, NodeError, Store, data, tls};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Environment variable naming a point at which the node process aborts, for
/// crash-consistency tests (`after-debit`: right after the budget debit has
/// committed, before the local step replies). Unset in production.
pub const FAILPOINT_ENV: &str = "CLEANROOM_NODE_FAILPOINT";

fn failpoint(name: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}

/// One live session.
struct Session {
    /// Monotonic time of the session's setup (it expires
    /// `session_max_secs` after that, however busy).
    opened: Duration,
    /// Monotonic time of the session's last message, received or sent (it
    /// expires `session_ttl_secs` after that).
    last_seen: Mutex<Duration>,
    /// Set when the session ends; no step starts after it, and the last
    /// step holding the secrets drops them.
    ended: AtomicBool,
    sid: SessionId,
    hash: AnalysisHash,
    analysis: Analysis,
    /// The certificate identity that set the session up; no other may use it.
    coordinator: String,
    /// The session's secrets; taken (and zeroized) when the session ends,
    /// even while a stream task still holds the session.
    proto: RwLock<Option<NodeSession>>,
    /// The node's own shuffled list while it is being sent (it holds the
    /// list's mask seed); taken when sent or when the session ends.
    list: Mutex<Option<ShuffledList>>,
    local_done: AtomicBool,
    /// Lists this node has started re-blinding: one stream per list (with
    /// the owner's length tag and each chunk's sender tag, the node
    /// re-blinds only the points the list's owner and earlier hops sent).
    reblinded: Mutex<HashSet<u32>>,
}

/// How often a node running its local step tells the coordinator it is
/// alive (a wire parameter both sides know).
pub use cleanroom_proto::HEARTBEAT;

fn shutting_down() -> Status {
    Status::unavailable("the node is shutting down")
}

fn closed() -> Status {
    Status::not_found("the session has ended (finished, aborted or expired)")
}

impl Session {
    /// Ends the session: no step starts after this, and its secrets (and its
    /// list) are dropped now, or, if a step is using them, by that step as
    /// soon as it is done. Never blocks.
    fn close(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.list.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.drop_secrets_if_ended();
    }

    fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Takes the secrets if the session has ended and no step holds them
    /// (a step that does calls this again when it lets go).
    fn drop_secrets_if_ended(&self) {
        if !self.is_ended() {
            return;
        }
        match self.proto.try_write() {
            Ok(mut g) => drop(g.take()),
            Err(std::sync::TryLockError::Poisoned(e)) => drop(e.into_inner().take()),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }

    fn with<T>(&self, f: impl FnOnce(&NodeSession) -> Result<T, Status>) -> Result<T, Status> {
        if self.is_ended() {
            return Err(closed());
        }
        let out = {
            let guard = self.proto.read().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().ok_or_else(closed).and_then(f)
        };
        self.drop_secrets_if_ended();
        out
    }

    fn with_mut<T>(
        &self,
        f: impl FnOnce(&mut NodeSession) -> Result<T, Status>,
    ) -> Result<T, Status> {
        if self.is_ended() {
            return Err(closed());
        }
        let out = {
            let mut guard = self.proto.write().unwrap_or_else(|e| e.into_inner());
            guard.as_mut().ok_or_else(closed).and_then(f)
        };
        self.drop_secrets_if_ended();
        out
    }

    /// Notes activity now (the idle TTL counts from the last one).
    fn touch(&self, now: Duration) {
        *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// A record of `event` for this session.
    fn record(&self, store: &Store, event: Event) -> Record {
        let mut r = store.record(event);
        r.sid = Some(self.sid.to_hex());
        r.analysis_hash = Some(self.hash.to_hex());
        r.analysis = Some(self.analysis.name.clone());
        r.coordinator = Some(self.coordinator.clone());
        r
    }
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
    store: Arc<Store>,
    identity: IdentityKey,
    peers: PeerKeys,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    /// The engine that runs the local query.
    engine: Engine,
    clock: Arc<dyn Clock>,
    /// Set when the node starts shutting down: no session opens or steps
    /// after it.
    closing: AtomicBool,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// The class of a node error, for audit records and logs.
fn class(e: &NodeError) -> &'static str {
    match e {
        NodeError::NotApproved(_) => "not approved",
        NodeError::Revoked(_) => "approval revoked",
        NodeError::Expired { .. } => "analysis expired",
        NodeError::NotAParty(_) => "not a party",
        NodeError::MissingPeerKey(_) => "missing pinned peer key",
        NodeError::SessionReused(_) => "session id reused",
        NodeError::Analysis(_) => "invalid analysis",
        // Every refusal by name (no catch-all: a new rule needs a class).
        NodeError::Policy(r) => match r {
            Refusal::DpRequired(_) => "policy: dp required",
            Refusal::EpsilonTooLarge { .. } => "policy: epsilon above maximum",
            Refusal::BelowFloor { .. } => "policy: min_matched below floor",
            Refusal::PsiNotAllowed { .. } => "policy: matching protocol not allowed",
            Refusal::BudgetExhausted { .. } => "budget exhausted",
        },
        NodeError::Data(_) => "local query failed",
        _ => "internal error",
    }
}

fn status(e: NodeError) -> Status {
    match &e {
        NodeError::NotApproved(_)
        | NodeError::Revoked(_)
        | NodeError::Expired { .. }
        | NodeError::NotAParty(_)
        | NodeError::MissingPeerKey(_)
        | NodeError::Policy(_) => Status::failed_precondition(e.to_string()),
        NodeError::SessionReused(_) => Status::already_exists(e.to_string()),
        NodeError::SessionEnded(_) => Status::not_found(e.to_string()),
        NodeError::Analysis(_) => Status::invalid_argument(e.to_string()),
        NodeError::Data(d) => Status::failed_precondition(d.for_peer()),
        _ => {
            error!("internal error: {e}");
            Status::internal("internal error at the node (see its log)")
        }
    }
}

fn proto_status(e: ProtocolError) -> Status {
    match e {
        ProtocolError::TooFewMatches
        | ProtocolError::MissingPeerKey(_)
        | ProtocolError::SumTooLarge { .. }
        | ProtocolError::DuplicateKey { .. }
        | ProtocolError::WidthMismatch { .. }
        | ProtocolError::BadGroup { .. }
        | ProtocolError::ListTooLong { .. } => Status::failed_precondition(e.to_string()),
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
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        // A panic's message stays in this node's log.
        error!("worker failed: {e}");
        Status::internal("internal error at the node (see its log)")
    })?
}

impl NodeService {
    /// Loads tables, identity and state for `config`.
    pub async fn new(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Self, NodeError> {
        Ok(NodeService(Arc::new(NodeState::load(config, clock).await?)))
    }

    /// Sessions currently open (for tests and health reporting).
    pub fn open_sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl NodeState {
    async fn load(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Self, NodeError> {
        let store = Arc::new(Store::open(&config.state_dir, clock.clone())?);
        // Every table must open now (a missing file stops the node); each
        // run opens them afresh, so it reads a Delta table's latest version.
        // A Spark cluster that does not answer yet (stopped, starting) is
        // only a warning: each setup checks it again.
        let engine = Engine::from_config(&config.engine)?;
        info!(engine = %engine.describe(), "local query engine");
        match engine.open(&config.tables).await {
            Ok(t) => {
                for (table, version) in &t.versions {
                    info!(table, version, "delta table");
                }
            }
            Err(e @ data::DataError::Unreachable { .. }) => {
                warn!("{e}; setups are refused until it answers");
            }
            Err(e) => return Err(e.into()),
        }
        let identity = config.identity()?;
        let peers = config.peer_keys()?;
        for c in &config.authorized_coordinators {
            if config.policy_for(c).epsilon_budget.is_none() {
                warn!(
                    coordinator = %c,
                    "no epsilon budget for this coordinator identity: DP runs are not capped \
                     (set [policy.{c}] epsilon_budget); budgets are per identity and add up"
                );
            }
        }
        Ok(NodeState {
            config,
            store,
            identity,
            peers,
            sessions: Mutex::new(HashMap::new()),
            engine,
            closing: AtomicBool::new(false),
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

    /// Drops sessions idle for longer than the configured TTL, or older
    /// than the maximum session age (their secrets with them), and records
    /// their expiry. Runs before every session lookup and from a periodic
    /// sweep (see [`crate::server`]), so a session whose coordinator
    /// vanished does not wait for the next request.
    pub fn expire_sessions(&self) {
        let ttl = Duration::from_secs(self.config.session_ttl_secs);
        let max_age = Duration::from_secs(self.config.session_max_secs);
        let now = self.clock.now();
        let mut expired = Vec::new();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| {
                let last = *s.last_seen.lock().unwrap_or_else(|e| e.into_inner());
                let keep = now.saturating_sub(last) < ttl
                    && now.saturating_sub(s.opened) < max_age
                    && !s.is_ended();
                if !keep {
                    expired.push(s.clone());
                }
                keep
            });
        for s in expired {
            warn!(sid = %s.sid, "session expired unfinished; its secrets are dropped");
            self.end_session(&s, Event::Expire, "expired unfinished");
        }
    }

    /// Ends `s` on the node's own initiative (expiry, shutdown): its
    /// secrets dropped, the end recorded once with `outcome`.
    fn end_session(&self, s: &Session, event: Event, outcome: &str) {
        s.close();
        let mut rec = s.record(&self.store, event);
        rec.outcome = outcome.into();
        if let Err(e) = self.store.close_session(&rec) {
            error!(sid = %s.sid, "cannot record the end of the session ({outcome}): {e}");
        }
    }

    /// Ends every open session (the node is shutting down): secrets
    /// dropped, an abort recorded for each; nothing is released. Returns how
    /// many there were.
    pub fn abort_all_sessions(&self) -> usize {
        self.closing.store(true, Ordering::SeqCst);
        let open: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in &open {
            warn!(sid = %s.sid, "node shutting down: session aborted");
            self.end_session(s, Event::Abort, "node shut down");
        }
        open.len()
    }

    /// The open session `r` names, for the identity `who` that set it up.
    fn session(&self, r: &Option<SessionRef>, who: &str) -> Result<Arc<Session>, Status> {
        let (sid, hash) = parse_ref(r)?;
        if self.closing.load(Ordering::SeqCst) {
            return Err(shutting_down());
        }
        self.expire_sessions();
        let s = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sid)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no open session {sid} (never set up, finished or expired)"
                ))
            })?;
        if s.coordinator != who {
            warn!(%sid, caller = %who, "refused: the session belongs to another coordinator identity");
            return Err(Status::permission_denied(
                "the session was set up by another coordinator identity",
            ));
        }
        if s.hash != hash {
            return Err(Status::invalid_argument(
                "analysis hash does not match the session",
            ));
        }
        if s.is_ended() {
            return Err(closed());
        }
        s.touch(self.clock.now());
        Ok(s)
    }

    /// Checks everything a setup needs, in order, before any state changes:
    /// the text and its hash, the approval (not revoked, not expired), party
    /// membership, the policy and the budget; then claims the sid.
    async fn setup_session(
        &self,
        who: &str,
        sid: SessionId,
        hash: AnalysisHash,
        text: &str,
    ) -> Result<Arc<Session>, NodeError> {
        let analysis = Analysis::parse(text)?;
        if analysis.hash() != hash {
            return Err(NodeError::Analysis(cleanroom::AnalysisError::Syntax(
                format!(
                    "analysis text hashes to {}, not to the announced {hash}",
                    analysis.hash()
                ),
            )));
        }
        let approval = self
            .store
            .approval(&hash)?
            .ok_or_else(|| NodeError::NotApproved(hash.to_hex()))?;
        if approval.revoked_at.is_some() {
            return Err(NodeError::Revoked(hash.to_hex()));
        }
        if let Some(at) = analysis.expires_at()
            && self.clock.unix_now() >= at
        {
            return Err(NodeError::Expired {
                hash: hash.to_hex(),
                date: analysis.expires.clone().unwrap_or_default(),
            });
        }
        if analysis.party_index(&self.config.name).is_none() {
            return Err(NodeError::NotAParty(self.config.name.clone()));
        }
        let policy = self.config.policy_for(who);
        policy.admit(who, &analysis)?;
        policy.afford(
            who,
            &self.store.spent(who)?,
            analysis.privacy_cost().as_ref(),
        )?;
        if self.store.session_used(&sid)? {
            return Err(NodeError::SessionReused(sid.to_hex()));
        }
        // An engine that does not answer fails the setup, before any budget
        // is spent. It is asked only now, for an analysis this node would
        // run, so a coordinator learns nothing of the bank's cluster from
        // setups the node refuses anyway. The log names where the engine
        // is; the coordinator learns only its name.
        if let Err(e) = self.engine.check().await {
            warn!(%sid, "{e}");
            return Err(e.into());
        }
        let proto = NodeSession::new(
            &analysis,
            sid,
            &self.config.name,
            &self.identity,
            &self.peers,
            &mut os_rng(),
        )
        .map_err(|e| match e {
            ProtocolError::MissingPeerKey(p) => NodeError::MissingPeerKey(p),
            e => NodeError::Config(e.to_string()),
        })?;
        let session = Arc::new(Session {
            opened: self.clock.now(),
            last_seen: Mutex::new(self.clock.now()),
            ended: AtomicBool::new(false),
            sid,
            hash,
            analysis,
            coordinator: who.to_string(),
            proto: RwLock::new(Some(proto)),
            list: Mutex::new(None),
            local_done: AtomicBool::new(false),
            reblinded: Mutex::new(HashSet::new()),
        });
        self.store
            .open_session(&session.record(&self.store, Event::Setup))?;
        Ok(session)
    }

    /// Records a step that failed, with its class only.
    fn failed(&self, s: &Session, step: &str, st: &Status) {
        let mut rec = s.record(&self.store, Event::Failed);
        rec.outcome = format!("{step}: {:?}", st.code());
        if let Err(e) = self.store.log(&rec) {
            error!(sid = %s.sid, "cannot record a failure: {e}");
        }
        warn!(sid = %s.sid, step, code = ?st.code(), "step failed");
    }

    /// The local step up to the shuffled list: open the tables, plan the
    /// query, debit, then the query's batches streamed into the list builder (blinding on all cores while
    /// the engine reads), then padding and the shuffle. Returns the list's
    /// length and dummies; the list itself stays in the session.
    async fn prepare_list(
        &self,
        s: &Arc<Session>,
    ) -> Result<(u64, Vec<u64>, data::TableVersions), Status> {
        // The tables open first (their metadata and, for a Delta table,
        // the version this run reads) and the query is planned and its
        // columns checked, reading no row: a table that cannot open, an
        // engine gone since setup, or SQL that does not fit the tables or
        // the analysis costs no budget. Then the budget is debited, durably
        // and with its audit record, before the query runs.
        let tables = self
            .engine
            .open(&self.config.tables)
            .await
            .map_err(|e| status(e.into()))?;
        let versions = tables.versions.clone();
        let planned = tables
            .plan(&s.analysis, &self.config.name)
            .await
            .map_err(|e| status(e.into()))?;
        let policy = self.config.policy_for(&s.coordinator);
        self.store
            .debit(
                &s.record(&self.store, Event::Debit),
                s.analysis.privacy_cost().as_ref(),
                &policy,
            )
            .map_err(status)?;
        failpoint("after-debit");
        let mut batches = planned.run().await.map_err(|e| status(e.into()))?;
        // The builder borrows the session's secrets, so it lives on one
        // blocking thread; the engine's batches reach it through a channel.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RowBatch>(2);
        let s2 = s.clone();
        // It holds the secrets' read lock meanwhile; ending the session
        // never waits for it (see `Session::close`), and it stops at the
        // next batch.
        let builder = tokio::task::spawn_blocking(move || {
            s2.with(|proto| {
                let mut b = proto.list_builder();
                while let Some(batch) = rx.blocking_recv() {
                    if s2.is_ended() {
                        return Err(closed());
                    }
                    b.push(&batch).map_err(proto_status)?;
                }
                b.finish(&mut os_rng()).map_err(proto_status)
            })
        });
        let mut failed = None;
        while let Some(batch) = batches.next().await {
            if s.is_ended() {
                failed = Some(closed());
                break;
            }
            match batch {
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        break; // the builder stopped: its error follows
                    }
                }
                Err(e) => {
                    failed = Some(status(e.into()));
                    break;
                }
            }
        }
        drop(tx);
        let built = builder
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")));
        if let Some(st) = failed {
            return Err(st);
        }
        let list = built??;
        let out = (list.len(), list.dummies().to_vec(), versions);
        // Kept only if the session is still open (`close` sets `ended`
        // before it empties `list`, so a list is never stored after that).
        let mut slot = s.list.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_ended() {
            return Err(closed());
        }
        *slot = Some(list);
        Ok(out)
    }
}

/// Streams a session's shuffled list as ListChunks, computing each chunk
/// (gather + mask) on a blocking thread only when the channel has room.
fn stream_list(
    s: Arc<Session>,
    clock: Arc<dyn Clock>,
    len: u64,
    dummies: Vec<u64>,
    length_tags: Vec<Vec<u8>>,
    tx: tokio::sync::mpsc::Sender<Result<ListChunk, Status>>,
) {
    tokio::spawn(async move {
        let mut start = 0u64;
        // What only the first chunk carries.
        let mut head = Some((dummies, length_tags));
        while start < len || head.is_some() {
            let s2 = s.clone();
            let chunk = blocking(move || {
                let (points, masked) = {
                    let guard = s2.list.lock().unwrap_or_else(|e| e.into_inner());
                    let list = guard.as_ref().ok_or_else(closed)?;
                    list.chunk(start, CHUNK_POINTS)
                };
                // Tagged for the successor, which re-blinds it next.
                let tag = s2.with(|p| Ok(p.chunk_tag(p.index(), start, &points)))?;
                Ok((points, masked, tag))
            })
            .await;
            let (dummy_positions, length_tags) = head.take().unwrap_or_default();
            let msg = chunk.map(|(points, masked, chunk_tag)| ListChunk {
                total_rows: len,
                dummy_positions,
                points,
                masked,
                heartbeat: false,
                length_tags,
                chunk_tag,
            });
            let stop = msg.is_err();
            if let Ok(m) = &msg {
                start += (m.points.len() / encode::element_len(s.analysis.psi)) as u64;
            }
            if tx.send(msg).await.is_err() || stop {
                break;
            }
            // A chunk taken by the coordinator is activity of the session.
            s.touch(clock.now());
        }
        // The list (and its mask seed) is no longer needed.
        s.list.lock().unwrap_or_else(|e| e.into_inner()).take();
    });
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
        let who = self.authorize(&req)?;
        let policy = self.config.policy_for(&who);
        let visible: Vec<String> = self
            .config
            .tables
            .keys()
            .filter(|t| policy.shows(t))
            .cloned()
            .collect();
        // Only the tables this coordinator may see are opened.
        let shown = self
            .config
            .tables
            .iter()
            .filter(|(t, _)| visible.contains(t))
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        let tables = self
            .engine
            .open(&shown)
            .await
            .map_err(|e| status(e.into()))?
            .catalog(&visible)
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
        if self.closing.load(Ordering::SeqCst) {
            return Err(shutting_down());
        }
        self.expire_sessions();
        let opened = self.setup_session(&who, sid, hash, &r.analysis_toml).await;
        match opened {
            Ok(s) => {
                info!(coordinator = %who, %sid, analysis = %s.analysis.name, "session opened");
                let sealed_group_keys = s.with(|p| Ok(p.sealed_group_keys().to_vec()))?;
                self.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(sid, s);
                // A shutdown that began meanwhile did not see this session.
                if self.closing.load(Ordering::SeqCst) {
                    self.abort_all_sessions();
                    return Err(shutting_down());
                }
                Ok(Response::new(SetupResponse {
                    party: self.config.name.clone(),
                    sealed_group_keys,
                }))
            }
            Err(e) => {
                let mut rec = self.store.record(Event::Refused);
                rec.sid = Some(sid.to_hex());
                rec.analysis_hash = Some(hash.to_hex());
                rec.coordinator = Some(who.clone());
                rec.outcome = class(&e).to_string();
                if let Err(e) = self.store.log(&rec) {
                    error!(%sid, "cannot record a refusal: {e}");
                }
                warn!(coordinator = %who, %sid, reason = class(&e), "setup refused");
                Err(status(e))
            }
        }
    }

    type LocalStepStream = Stream_<ListChunk>;

    async fn local_step(
        &self,
        req: Request<LocalStepRequest>,
    ) -> Result<Response<Self::LocalStepStream>, Status> {
        let who = self.authorize(&req)?;
        let s = self.session(&req.get_ref().session, &who)?;
        if s.local_done.swap(true, Ordering::SeqCst) {
            return Err(Status::failed_precondition(
                "local step already ran for this session",
            ));
        }
        // keyed-prf: the group key first (before any table opens or budget
        // is debited); a sealed key in an ecdh-ring session is refused.
        let sealed = &req.get_ref().sealed_group_key;
        let opened = s.with(|p| {
            if !sealed.is_empty() || (p.psi() == Psi::KeyedPrf && p.index() != 0) {
                p.accept_group_key(sealed).map_err(proto_status)?;
            }
            Ok(())
        });
        if let Err(st) = opened {
            self.failed(&s, "local step", &st);
            return Err(st);
        }
        // The stream opens at once; until the list is ready it carries a
        // heartbeat every few seconds, so the coordinator can tell a long
        // query from a stalled node.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let prepared = {
                let prep = this.prepare_list(&s);
                tokio::pin!(prep);
                let mut beat = tokio::time::interval(HEARTBEAT);
                beat.tick().await; // the first tick is immediate
                loop {
                    tokio::select! {
                        r = &mut prep => break r,
                        _ = beat.tick() => {
                            // Heartbeats say the node is working on a live
                            // session; none after it ended.
                            if s.is_ended() {
                                let _ = tx.send(Err(closed())).await;
                                return;
                            }
                            let hb = ListChunk { heartbeat: true, ..ListChunk::default() };
                            if tx.send(Ok(hb)).await.is_err() {
                                // The coordinator hung up: the session ends
                                // by its abort or expiry.
                                return;
                            }
                            s.touch(this.clock.now());
                        }
                    }
                }
            };
            let prepared = prepared.and_then(|(len, dummies, versions)| {
                let tags = s.with(|p| Ok(p.length_tags(len)))?;
                Ok((len, dummies, tags, versions))
            });
            match prepared {
                Ok((len, dummies, tags, versions)) => {
                    let mut rec = s.record(&this.store, Event::LocalStep);
                    rec.list_rows = Some(len);
                    for (table, version) in &versions {
                        info!(sid = %s.sid, table, version, "local step read this delta table version");
                    }
                    rec.table_versions = versions;
                    if let Err(e) = this.store.log(&rec) {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                    info!(sid = %s.sid, rows = len, "local step: list ready, streaming it");
                    stream_list(s, this.clock.clone(), len, dummies, tags, tx);
                }
                Err(st) => {
                    this.failed(&s, "local step", &st);
                    let _ = tx.send(Err(st)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ReblindStream = Stream_<PointChunk>;

    async fn reblind(
        &self,
        req: Request<Streaming<ReblindChunk>>,
    ) -> Result<Response<Self::ReblindStream>, Status> {
        let who = self.authorize(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            // The session, list and accepted stream state, from the first chunk.
            let mut bound: Option<(Arc<Session>, u32, Arc<Mutex<ReblindState>>)> = None;
            let mut points_done = 0u64;
            let idle = Duration::from_secs(this.config.stream_idle_secs);
            loop {
                let next = tokio::time::timeout(idle, inbound.message())
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "no re-blind chunk for {} s",
                            idle.as_secs()
                        )))
                    });
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        if let Some((s, _, _)) = &bound {
                            let mut rec = s.record(&this.store, Event::Reblind);
                            rec.list_rows = Some(points_done);
                            if let Err(e) = this.store.log(&rec) {
                                error!(sid = %s.sid, "cannot record a re-blind: {e}");
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        if let Some((s, _, _)) = &bound {
                            this.failed(s, "re-blind", &e);
                        }
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                let msg_points_len = msg.points.len();
                let session_ref = msg.session.clone();
                let step = async {
                    if msg.points.len() > CHUNK_POINTS * POINT_LEN {
                        return Err(Status::invalid_argument(format!(
                            "a re-blind chunk carries at most {CHUNK_POINTS} points"
                        )));
                    }
                    let s = this.session(&msg.session, &who)?;
                    let stream = match &bound {
                        Some((b, owner, _)) if !Arc::ptr_eq(b, &s) || *owner != msg.owner => {
                            return Err(Status::invalid_argument(
                                "a re-blind stream must carry one list of one session",
                            ));
                        }
                        Some((_, _, st)) => {
                            if msg.list_rows != 0 || !msg.length_tag.is_empty() {
                                return Err(Status::invalid_argument(
                                    "only the first chunk of a re-blind stream carries the list's length",
                                ));
                            }
                            st.clone()
                        }
                        None => {
                            if !s
                                .reblinded
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(msg.owner)
                            {
                                return Err(Status::failed_precondition(
                                    "this list was already re-blinded here",
                                ));
                            }
                            // The owner's tag on the list's length (an HMAC:
                            // cheap enough for the async thread).
                            let st = s.with(|proto| {
                                proto
                                    .open_reblind(
                                        msg.owner as usize,
                                        msg.list_rows,
                                        &msg.length_tag,
                                    )
                                    .map_err(proto_status)
                            })?;
                            let st = Arc::new(Mutex::new(st));
                            bound = Some((s.clone(), msg.owner, st.clone()));
                            st
                        }
                    };
                    let (points, tag) = (msg.points, msg.chunk_tag);
                    blocking(move || {
                        let mut st = stream.lock().unwrap_or_else(|e| e.into_inner());
                        s.with(|proto| proto.reblind(&mut st, &points, &tag).map_err(proto_status))
                    })
                    .await
                };
                let input_points = (msg_points_len / POINT_LEN) as u64;
                let out = step.await;
                match &out {
                    Ok(_) => points_done += input_points,
                    Err(st) => match &bound {
                        Some((s, _, _)) => this.failed(s, "re-blind", st),
                        // A refused first chunk (bad length tag, a second
                        // stream for a list) is recorded too: it is what a
                        // coordinator probing for an oracle would send.
                        None => {
                            if let Ok(s) = this.session(&session_ref, &who) {
                                this.failed(&s, "re-blind", st);
                            }
                        }
                    },
                }
                let out = out.map(|(points, chunk_tag)| PointChunk { points, chunk_tag });
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
        let who = self.authorize(&req)?;
        let r = req.into_inner();
        let s = self.session(&r.session, &who)?;
        let (s2, store) = (s.clone(), self.store.clone());
        // The audit record is written with the share, in the same worker:
        // if the caller's deadline drops this call, the computed share is
        // never sent but the record of it stays (write-ahead audit).
        let share = blocking(move || {
            // The bitmap is parsed strictly (exactly one bit a row of the
            // list, nothing past its end) before the session sees it.
            let positions = Positions::from_bytes(&r.positions, r.list_len)
                .map_err(|e| proto_status(e.into()))?;
            let core = CoreMaskSum {
                owner: r.owner as usize,
                list_len: r.list_len,
                length_tag: r.length_tag,
                positions,
                pad: r.pad,
            };
            drop(r.positions);
            let share = s2.with_mut(|proto| proto.mask_sum(&core).map_err(proto_status))?;
            store
                .log(&s2.record(&store, Event::MaskSum))
                .map_err(status)?;
            Ok(share)
        })
        .await;
        let share = match share {
            Ok(sh) => sh,
            Err(st) => {
                self.failed(&s, "mask sum", &st);
                return Err(st);
            }
        };
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
        let who = self.authorize(&req)?;
        let r = req.into_inner();
        let s = self.session(&r.session, &who)?;
        let delivery = Delivery {
            count: r.count,
            sums: r.sums.iter().map(|l| l.masked_sum.clone()).collect(),
            sealed: r
                .sums
                .into_iter()
                .map(|l| (!l.sealed_mask_sum.is_empty()).then_some(l.sealed_mask_sum))
                .collect(),
        };
        let release =
            match s.with_mut(|proto| proto.unmask_release(&delivery).map_err(proto_status)) {
                Ok(r) => r,
                Err(st) => {
                    self.failed(&s, "deliver", &st);
                    return Err(st);
                }
            };
        let mut rec = s.record(&self.store, Event::Release);
        rec.aggregates = s
            .analysis
            .aggregates
            .iter()
            .map(|a| a.to_string())
            .collect();
        let stored_as = match self.store.store_result(&release, &rec) {
            Ok(name) => name,
            Err(e) => {
                let st = status(e);
                self.failed(&s, "deliver", &st);
                return Err(st);
            }
        };
        info!(sid = %s.sid, analysis = %s.analysis.name, "result stored in the state database");
        Ok(Response::new(DeliverResponse { stored_as }))
    }

    async fn finish(
        &self,
        req: Request<FinishRequest>,
    ) -> Result<Response<FinishResponse>, Status> {
        let who = self.authorize(&req)?;
        let r = req.into_inner();
        let s = self.session(&r.session, &who)?;
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&s.sid);
        s.close();
        let reason = r.reason().as_str_name();
        let rec = if r.aborted {
            warn!(sid = %s.sid, reason, "session aborted by the coordinator");
            let mut rec = s.record(&self.store, Event::Abort);
            rec.outcome = reason.to_string();
            rec
        } else {
            info!(sid = %s.sid, "session finished");
            s.record(&self.store, Event::Finish)
        };
        self.store.close_session(&rec).map_err(status)?;
        Ok(Response::new(FinishResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session's secrets go when it ends, even while a stream task still
    /// holds the session: later steps find it closed.
    #[test]
    fn closing_drops_secrets_held_by_a_stream() {
        let text = "name = \"t\"\nrecipient = \"a\"\n[parties.a]\nsql = \"s\"\n[parties.b]\nsql = \"s\"\n\
                    [output]\naggregates = [\"count\"]\n";
        let analysis = Analysis::parse(text).unwrap();
        let mut rng = os_rng();
        let (ka, kb) = (IdentityKey::random(&mut rng), IdentityKey::random(&mut rng));
        let peers: PeerKeys = [("b".to_string(), kb.public())].into();
        let sid = SessionId::random(&mut rng);
        let proto = NodeSession::new(&analysis, sid, "a", &ka, &peers, &mut rng).unwrap();
        let session = Arc::new(Session {
            opened: Duration::ZERO,
            last_seen: Mutex::new(Duration::ZERO),
            ended: AtomicBool::new(false),
            sid,
            hash: analysis.hash(),
            analysis,
            coordinator: "c".into(),
            proto: RwLock::new(Some(proto)),
            list: Mutex::new(None),
            local_done: AtomicBool::new(false),
            reblinded: Mutex::new(HashSet::new()),
        });
        let held_by_stream = session.clone();
        assert!(held_by_stream.with(|_| Ok(())).is_ok());
        session.close();
        assert!(held_by_stream.proto.read().unwrap().is_none());
        let err = held_by_stream.with(|_| Ok(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        // Closing while a step holds the secrets does not wait for it; the
        // step drops them when it lets go.
        let proto = NodeSession::new(&session.analysis, sid, "a", &ka, &peers, &mut rng).unwrap();
        let busy = Arc::new(Session {
            opened: Duration::ZERO,
            last_seen: Mutex::new(Duration::ZERO),
            ended: AtomicBool::new(false),
            sid,
            hash: session.hash,
            analysis: session.analysis.clone(),
            coordinator: "c".into(),
            proto: RwLock::new(Some(proto)),
            list: Mutex::new(None),
            local_done: AtomicBool::new(false),
            reblinded: Mutex::new(HashSet::new()),
        });
        let inside = busy.with(|_| {
            busy.close();
            // Still held here (by this step)...
            Ok(busy.proto.try_read().is_ok_and(|g| g.is_some()))
        });
        assert!(inside.unwrap());
        // ...and gone once the step is done.
        assert!(busy.proto.read().unwrap().is_none());
    }
}
