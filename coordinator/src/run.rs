//! Driving one run over gRPC. The cryptographic and matching steps are the
//! core crate's; this module only moves bytes and reports progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cleanroom::prf::SEALED_GROUP_KEY_LEN;
use cleanroom::protocol::{
    Delivery, Layout, ProtocolError, Split, plan_release, ring, sealed_mask_sum_len,
};
use cleanroom::session::os_rng;
use cleanroom::{Analysis, AnalysisHash, Psi, SessionId};
use cleanroom_node::tls::TlsMaterial;
use cleanroom_proto::v1::node_client::NodeClient;
use cleanroom_proto::v1::*;
use cleanroom_proto::{KEEPALIVE, KEEPALIVE_TIMEOUT, MAX_MESSAGE_BYTES};
use futures::future::try_join_all;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use prost::Message;
use thiserror::Error;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::deadline::{Deadlines, request, unary};
use crate::pipeline::{ListJob, RingOutput, through_ring};

/// A node to run against: party name (its certificate name) and URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    /// Party name, as in the analysis and the node's certificate.
    pub name: String,
    /// `https://host:port`.
    pub url: String,
}

impl std::str::FromStr for NodeTarget {
    type Err = String;
    /// Parses `name=https://host:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, url) = s.split_once('=').ok_or("expected NAME=https://HOST:PORT")?;
        if !url.starts_with("https://") {
            return Err(format!(
                "node {name}: URL must start with https:// (mutual TLS only)"
            ));
        }
        Ok(NodeTarget {
            name: name.trim().to_string(),
            url: url.trim().to_string(),
        })
    }
}

/// A callback told when each phase of a run starts and ends.
pub type PhaseHook = Arc<dyn Fn(&str, PhaseEdge) + Send + Sync>;

/// Whether a phase starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseEdge {
    /// The phase starts.
    Start,
    /// The phase ended (successfully).
    End,
}

/// How to run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// Told at each phase boundary (benchmarks sample processes there).
    pub on_phase: Option<PhaseHook>,
    /// How long to wait for each node, per phase.
    pub deadlines: Deadlines,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("progress", &self.progress)
            .field("deadlines", &self.deadlines)
            .finish_non_exhaustive()
    }
}

/// Phases of a run, in order: `setup`, `stream` (local steps and the
/// blinding ring, pipelined), `match`, `release` (mask sums and delivery),
/// `finish`.
pub const PHASES: [&str; 5] = ["setup", "stream", "match", "release", "finish"];

/// Bytes of protocol messages exchanged with one node (protobuf-encoded
/// sizes, without TLS and HTTP/2 framing).
#[derive(Debug, Default)]
pub struct Traffic {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Traffic {
    pub(crate) fn sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    /// (sent to the node, received from it).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

/// Wall time of one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseTime {
    /// Phase name (see [`PHASES`]).
    pub name: &'static str,
    /// Seconds.
    pub seconds: f64,
}

/// Bytes exchanged with one node over the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Party.
    pub node: String,
    /// Bytes the coordinator sent it.
    pub sent: u64,
    /// Bytes the coordinator received from it.
    pub received: u64,
}

/// The outcome as the coordinator knows it: where the result went, not what
/// it is.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Session id.
    pub sid: SessionId,
    /// Analysis hash.
    pub analysis_hash: AnalysisHash,
    /// The party whose node stored the result.
    pub recipient: String,
    /// Where the recipient's node stored it.
    pub stored_as: String,
    /// Wall time per phase.
    pub phases: Vec<PhaseTime>,
    /// Bytes exchanged with each node, in ring order.
    pub traffic: Vec<NodeTraffic>,
}

/// Coordinator errors. On any of them after setup, every node is told to
/// abort and nothing is released.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    /// The analysis file is invalid.
    #[error(transparent)]
    Analysis(#[from] cleanroom::AnalysisError),
    /// A party of the analysis has no `--node`.
    #[error("no node given for party {0:?}")]
    MissingNode(String),
    /// A `--node` names no party of the analysis (or repeats one).
    #[error("node {0:?} is not a party of the analysis, or is given twice")]
    UnknownNode(String),
    /// Could not connect.
    #[error("node {node}: cannot connect: {message}")]
    Connect {
        /// Party.
        node: String,
        /// Cause.
        message: String,
    },
    /// A node refused or failed a call.
    #[error("node {node} refused {call}: {code:?}: {message}")]
    Node {
        /// Party.
        node: String,
        /// RPC.
        call: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// Message from the node.
        message: String,
    },
    /// A node missed a deadline: it did not answer a call, or stayed
    /// silent on a stream while it owed a message, for too long.
    #[error("node {node} stalled in {call}: nothing within {seconds} s")]
    Stalled {
        /// Party.
        node: String,
        /// The call (phase) it stalled in.
        call: &'static str,
        /// The deadline that passed.
        seconds: f64,
    },
    /// A node sent something that does not fit the protocol.
    #[error("node {node}: bad response: {message}")]
    BadResponse {
        /// Party.
        node: String,
        /// What was wrong.
        message: String,
    },
    /// A protocol step failed (e.g. too few matches).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A task of the coordinator's own ended abnormally (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    /// The class the nodes are told when the run aborts on this error: never
    /// a count, a value or another party's error text.
    pub fn abort_reason(&self) -> AbortReason {
        match self {
            CoordinatorError::Stalled { .. }
            | CoordinatorError::Node {
                code: tonic::Code::DeadlineExceeded,
                ..
            } => AbortReason::Timeout,
            CoordinatorError::Node { call: "setup", .. } => AbortReason::SetupRefused,
            CoordinatorError::Node { .. } | CoordinatorError::Connect { .. } => {
                AbortReason::NodeFailed
            }
            CoordinatorError::BadResponse { .. } => AbortReason::BadResponse,
            CoordinatorError::Protocol(ProtocolError::TooFewMatches) => AbortReason::ReleaseRefused,
            CoordinatorError::Protocol(_) => AbortReason::Protocol,
            // The coordinator's own input or a bug: every variant named, so
            // a new one has to be classed here.
            CoordinatorError::Analysis(_)
            | CoordinatorError::MissingNode(_)
            | CoordinatorError::UnknownNode(_)
            | CoordinatorError::Internal(_) => AbortReason::Coordinator,
        }
    }
}

/// A connected node.
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) client: NodeClient<Channel>,
    pub(crate) traffic: Traffic,
}

impl Peer {
    pub(crate) fn fail(
        &self,
        call: &'static str,
    ) -> impl Fn(tonic::Status) -> CoordinatorError + '_ {
        move |s| CoordinatorError::Node {
            node: self.name.clone(),
            call,
            code: s.code(),
            message: s.message().to_string(),
        }
    }
    pub(crate) fn stalled(&self, call: &'static str, limit: Duration) -> CoordinatorError {
        CoordinatorError::Stalled {
            node: self.name.clone(),
            call,
            seconds: limit.as_secs_f64(),
        }
    }
    pub(crate) fn bad(&self, message: impl Into<String>) -> CoordinatorError {
        CoordinatorError::BadResponse {
            node: self.name.clone(),
            message: message.into(),
        }
    }
}

/// How long [`connect`] retries a node that refuses connections.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Whether a transport error is a refused TCP connection.
fn refused(e: &tonic::transport::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = c.source();
    }
    false
}

/// Connects to a node over mutual TLS, expecting its certificate to be
/// valid for the party name.
pub(crate) async fn connect(
    target: &NodeTarget,
    tls: &TlsMaterial,
    limit: Duration,
) -> Result<Peer, CoordinatorError> {
    let err = |m: String| CoordinatorError::Connect {
        node: target.name.clone(),
        message: m,
    };
    let endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(|e| err(e.to_string()))?
        .tls_config(tls.client_config(&target.name))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(KEEPALIVE))
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    // A node that is still starting refuses connections for a moment: retry
    // refused connections (only those) for up to CONNECT_PATIENCE.
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let channel = loop {
        // `connect_timeout` covers TCP only; a peer that accepts and then
        // never completes TLS or HTTP/2 must not hang the run.
        let attempt = tokio::time::timeout(limit, endpoint.connect())
            .await
            .map_err(|_| {
                err(format!(
                    "no TLS / HTTP/2 handshake within {} s",
                    limit.as_secs_f64()
                ))
            })?;
        match attempt {
            Ok(c) => break c,
            Err(e) if refused(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(err(format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                )));
            }
        }
    };
    let client = NodeClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Peer {
        name: target.name.clone(),
        client,
        traffic: Traffic::default(),
    })
}

/// Times the phases and tells the hook.
struct Clock<'a> {
    hook: Option<&'a PhaseHook>,
    times: Vec<PhaseTime>,
    current: Option<(&'static str, std::time::Instant)>,
}

impl<'a> Clock<'a> {
    fn new(hook: Option<&'a PhaseHook>) -> Self {
        Clock {
            hook,
            times: Vec::new(),
            current: None,
        }
    }
    fn start(&mut self, name: &'static str) {
        self.end();
        if let Some(h) = self.hook {
            h(name, PhaseEdge::Start);
        }
        self.current = Some((name, std::time::Instant::now()));
    }
    fn end(&mut self) {
        if let Some((name, t)) = self.current.take() {
            self.times.push(PhaseTime {
                name,
                seconds: t.elapsed().as_secs_f64(),
            });
            if let Some(h) = self.hook {
                h(name, PhaseEdge::End);
            }
        }
    }
}

struct Progress {
    multi: MultiProgress,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
        }
    }
    fn phase(&self, name: &str, len: u64) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_prefix(name.to_string());
        pb
    }
}

/// Runs `analysis_text` across `targets` with the coordinator's TLS identity.
pub async fn run_analysis(
    analysis_text: &str,
    targets: &[NodeTarget],
    tls: &TlsMaterial,
    opts: &RunOptions,
) -> Result<RunReport, CoordinatorError> {
    let analysis = Analysis::parse(analysis_text)?;
    let hash = analysis.hash();
    let names = analysis.party_names();
    // One target per party, in ring order.
    for t in targets {
        if analysis.party_index(&t.name).is_none()
            || targets.iter().filter(|o| o.name == t.name).count() > 1
        {
            return Err(CoordinatorError::UnknownNode(t.name.clone()));
        }
    }
    let mut ordered = Vec::new();
    for name in &names {
        let t = targets
            .iter()
            .find(|t| t.name == *name)
            .ok_or_else(|| CoordinatorError::MissingNode(name.to_string()))?;
        ordered.push(t.clone());
    }
    let limit = opts.deadlines.setup;
    // Shared with the lists' tasks in the stream.
    let peers: Arc<[Peer]> = try_join_all(ordered.iter().map(|t| connect(t, tls, limit)))
        .await?
        .into();
    let sid = SessionId::random(&mut os_rng());
    let session = SessionRef {
        sid: sid.as_bytes().to_vec(),
        analysis_hash: hash.0.to_vec(),
    };
    info!(%sid, analysis = %analysis.name, %hash, "starting run");
    let progress = Progress::new(opts.progress);
    let mut clock = Clock::new(opts.on_phase.as_ref());

    // Step 1: setup. A refusal here opened no session at that node; abort the others.
    clock.start("setup");
    let setup = progress.phase("setup", peers.len() as u64);
    let deadlines = &opts.deadlines;
    let results = futures::future::join_all(peers.iter().map(|p| {
        let mut c = p.client.clone();
        let req = SetupRequest {
            session: Some(session.clone()),
            analysis_toml: analysis_text.to_string(),
        };
        p.traffic.sent(req.encoded_len());
        let pb = setup.clone();
        async move {
            let r = unary(
                p,
                "setup",
                deadlines.setup,
                c.setup(request(req, deadlines.setup)),
            )
            .await;
            if let Ok(resp) = &r {
                p.traffic.received(resp.encoded_len());
            }
            pb.inc(1);
            r.and_then(|resp| {
                if resp.party == p.name {
                    Ok(resp.sealed_group_keys)
                } else {
                    Err(p.bad(format!("answered as party {:?}", resp.party)))
                }
            })
        }
    }))
    .await;
    setup.finish();
    let boxes = match results.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(b) => group_key_boxes(analysis.psi, &peers, b),
        Err(e) => Err(e),
    };
    let boxes = match boxes {
        Ok(b) => b,
        Err(e) => {
            abort(&peers, &session, &e, deadlines).await;
            return Err(e);
        }
    };

    let outcome = drive(
        &analysis, &peers, &session, boxes, &progress, &mut clock, deadlines,
    )
    .await;
    match outcome {
        Ok(stored_as) => {
            clock.start("finish");
            finish(&peers, &session, None, deadlines).await;
            clock.end();
            info!(%sid, recipient = %analysis.recipient, "result delivered to the recipient's node");
            Ok(RunReport {
                sid,
                analysis_hash: hash,
                recipient: analysis.recipient.clone(),
                stored_as,
                phases: clock.times,
                traffic: peers
                    .iter()
                    .map(|p| {
                        let (sent, received) = p.traffic.totals();
                        NodeTraffic {
                            node: p.name.clone(),
                            sent,
                            received,
                        }
                    })
                    .collect(),
            })
        }
        Err(e) => {
            abort(&peers, &session, &e, deadlines).await;
            Err(e)
        }
    }
}

async fn abort(peers: &[Peer], session: &SessionRef, e: &CoordinatorError, d: &Deadlines) {
    let reason = e.abort_reason();
    // The coordinator's own log names the node and the class of failure; the
    // errors it logs carry no counts (ProtocolError::TooFewMatches has none).
    warn!(class = reason.as_str_name(), "run aborted: {e}");
    finish(peers, session, Some(reason), d).await;
}

/// Tells every node, at once, that the run ended: a stalled node costs at
/// most the finish deadline and does not delay the others.
async fn finish(
    peers: &[Peer],
    session: &SessionRef,
    abort_reason: Option<AbortReason>,
    d: &Deadlines,
) {
    futures::future::join_all(peers.iter().map(|p| {
        let req = FinishRequest {
            session: Some(session.clone()),
            aborted: abort_reason.is_some(),
            reason: abort_reason.unwrap_or(AbortReason::Unspecified) as i32,
        };
        p.traffic.sent(req.encoded_len());
        let mut c = p.client.clone();
        async move {
            // Best effort: a node that never opened the session answers
            // NotFound, a stalled one times out (its session expires).
            if let Err(e) = unary(p, "finish", d.finish, c.finish(request(req, d.finish))).await {
                warn!("finish not acknowledged: {e}");
            }
        }
    }))
    .await;
}

/// Checks what each node's setup answer carried for the keyed-prf group key
/// and returns the box to relay to each party in ring order: under
/// keyed-prf the first party sends one sealed key of the fixed length per
/// other party (none for itself) and the others send none; under ecdh-ring
/// nobody sends any. The coordinator only checks lengths: it cannot open
/// the boxes.
fn group_key_boxes(
    psi: Psi,
    peers: &[Peer],
    mut sent: Vec<Vec<Vec<u8>>>,
) -> Result<Vec<Vec<u8>>, CoordinatorError> {
    let n = peers.len();
    for (i, b) in sent.iter().enumerate() {
        let expected = psi == Psi::KeyedPrf && i == 0;
        if !expected && !b.is_empty() {
            return Err(peers[i].bad(format!(
                "sent sealed group keys it has no part in sending under {psi}"
            )));
        }
        let well_formed = b.len() == n
            && b[0].is_empty()
            && b[1..].iter().all(|k| k.len() == SEALED_GROUP_KEY_LEN);
        if expected && !well_formed {
            return Err(peers[i].bad("did not send one sealed group key per other party"));
        }
    }
    Ok(match psi {
        Psi::KeyedPrf => std::mem::take(&mut sent[0]),
        Psi::EcdhRing => vec![Vec::new(); n],
    })
}

/// Steps 2–6 once every node has accepted the session; `boxes[i]` is the
/// sealed group key to relay to party `i` (keyed-prf; empty otherwise).
async fn drive(
    analysis: &Analysis,
    peers: &Arc<[Peer]>,
    session: &SessionRef,
    boxes: Vec<Vec<u8>>,
    progress: &Progress,
    clock: &mut Clock<'_>,
    deadlines: &Deadlines,
) -> Result<String, CoordinatorError> {
    let n = peers.len();
    // Steps 2 and 3, streamed: every list leaves its owner and goes around
    // the ring chunk by chunk; all lists travel at once.
    clock.start("stream");
    let layout = Layout::new(analysis);
    let received = progress.phase("local steps", 0);
    let finished = progress.phase("blinding ring", 0);
    let layout = &layout;
    // One split of the final lists into partitions for the whole run, so
    // they can be matched partition by partition.
    let split = &Split::new();
    // Each list on its own task, so that decoding and storing the lists'
    // chunks (the coordinator's share of the stream; TLS and HTTP/2 framing
    // already run on each connection's task) can use every core instead of
    // sharing this task. The first error stops every other list's task,
    // and waits for it to stop, before it is returned.
    let mut outputs: Vec<Option<RingOutput>> = boxes.iter().map(|_| None).collect();
    let mut tasks = JoinSet::new();
    for (owner, sealed) in boxes.into_iter().enumerate() {
        let (received, finished) = (received.clone(), finished.clone());
        let (peers, session, deadlines) = (peers.clone(), session.clone(), *deadlines);
        let job = ListJob {
            psi: analysis.psi,
            owner,
            width: layout.row_width(owner),
            sealed_group_key: sealed,
            split: split.clone(),
        };
        tasks.spawn(async move {
            let out = through_ring(&peers, &session, job, &deadlines, &received, &finished).await;
            if let Ok(out) = &out {
                received.inc_length(out.masked.len);
                finished.inc_length(out.masked.len);
            }
            (owner, out)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let failed = match joined {
            Ok((owner, Ok(out))) => {
                outputs[owner] = Some(out);
                continue;
            }
            Ok((_, Err(e))) => e,
            // No panic payload in the error: it could carry values.
            Err(e) if e.is_panic() => CoordinatorError::Internal("a list's task panicked".into()),
            Err(_) => CoordinatorError::Internal("a list's task was cancelled".into()),
        };
        tasks.shutdown().await;
        return Err(failed);
    }
    let outputs: Vec<RingOutput> = outputs
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| CoordinatorError::Internal("a list's task gave no output".into()))?;
    received.finish();
    finished.finish();
    let mut lists = Vec::with_capacity(n);
    let mut finals = Vec::with_capacity(n);
    let mut length_tags = Vec::with_capacity(n);
    for o in outputs {
        lists.push(o.masked);
        finals.push(
            o.finals.ok_or_else(|| {
                ProtocolError::Violation("the ring produced no final list".into())
            })?,
        );
        length_tags.push(o.length_tags);
    }

    // Steps 4–7: match, DP dummies, masked sums, release policy, noise and
    // pads, all before anything is unmasked.
    clock.start("match");
    let plan = plan_release(analysis, &lists, &finals, &mut os_rng())?;
    drop(finals);
    clock.start("release");
    let release = progress.phase("release", n as u64 + 1);
    let plan = &plan;
    let recipient_index = analysis
        .party_index(&analysis.recipient)
        .ok_or_else(|| ProtocolError::UnknownParty(analysis.recipient.clone()))?;
    let sealed = try_join_all(lists.iter().enumerate().map(|(owner, list)| {
        let u = ring::unmasker(owner, n);
        // keyed-prf: the owner's length tag for the unmasker, which saw no
        // re-blind stream of the list.
        let tag = match analysis.psi {
            Psi::KeyedPrf => std::mem::take(&mut length_tags[owner][u]),
            Psi::EcdhRing => Vec::new(),
        };
        let unmasker = &peers[u];
        let pb = release.clone();
        async move {
            if list.width == 0 {
                return Ok(Vec::new());
            }
            let ask = plan.mask_sum_request(owner, list.len, tag);
            let req = MaskSumRequest {
                session: Some(session.clone()),
                owner: owner as u32,
                list_len: ask.list_len,
                length_tag: ask.length_tag,
                positions: ask.positions.to_bytes(),
                pad: ask.pad,
            };
            unmasker.traffic.sent(req.encoded_len());
            let limit = deadlines.mask_sum(list.len);
            let r = unary(
                unmasker,
                "mask sum",
                limit,
                unmasker.client.clone().mask_sum(request(req, limit)),
            )
            .await?;
            unmasker.traffic.received(r.encoded_len());
            // Relayed to the recipient as it is: of the length the analysis
            // fixes (none where the recipient is the unmasker and kept the
            // sum), so the delivery's size says nothing of the release.
            let want = sealed_mask_sum_len(list.width, u, recipient_index);
            if r.sealed.len() != want {
                return Err(unmasker.bad(format!(
                    "sealed mask sum of {} bytes ({want} expected)",
                    r.sealed.len()
                )));
            }
            pb.inc(1);
            Ok::<_, CoordinatorError>(r.sealed)
        }
    }))
    .await?;

    // Step 6: deliver to the recipient's node, which unmasks and stores.
    let recipient = &peers[recipient_index];
    let delivery = plan.delivery(
        sealed
            .into_iter()
            .map(|s| (!s.is_empty()).then_some(s))
            .collect(),
    );
    let req = deliver_request(session.clone(), delivery);
    recipient.traffic.sent(req.encoded_len());
    let resp = unary(
        recipient,
        "deliver",
        deadlines.release,
        recipient
            .client
            .clone()
            .deliver(request(req, deadlines.release)),
    )
    .await?;
    recipient.traffic.received(resp.encoded_len());
    release.inc(1);
    release.finish();
    Ok(resp.stored_as)
}

/// The step-6 message to the recipient's node for `delivery`. Its size is
/// fixed by the analysis, whatever the release (TLS hides contents, not
/// lengths): the count, present exactly when the analysis releases an
/// ungrouped count, and every masked sum are fixed-width words on the wire,
/// and each sealed mask sum is either absent (where the analysis says so)
/// or of fixed length.
pub fn deliver_request(session: SessionRef, delivery: Delivery) -> DeliverRequest {
    DeliverRequest {
        session: Some(session),
        count: delivery.count,
        sums: delivery
            .sums
            .into_iter()
            .zip(delivery.sealed)
            .map(|(masked_sum, sealed)| ListSum {
                masked_sum,
                sealed_mask_sum: sealed.unwrap_or_default(),
            })
            .collect(),
    }
}
