//! Driving one run over gRPC. The cryptographic and matching steps are the
//! core crate's; this module only moves bytes and reports progress.

use std::time::Duration;

use cleanroom::protocol::{Layout, MAX_LIST_ROWS, PreparedList, ProtocolError, plan_release, ring};
use cleanroom::psi::{POINT_LEN, TRUNCATED_LEN};
use cleanroom::session::os_rng;
use cleanroom::{Analysis, AnalysisHash, SessionId};
use cleanroom_node::tls::TlsMaterial;
use cleanroom_proto::v1::node_client::NodeClient;
use cleanroom_proto::v1::*;
use cleanroom_proto::{CHUNK_POINTS, MAX_MESSAGE_BYTES};
use futures::future::try_join_all;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

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

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Draw progress bars (on a terminal).
    pub progress: bool,
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
}

impl CoordinatorError {
    /// The class the nodes are told when the run aborts on this error: never
    /// a count, a value or another party's error text.
    pub fn abort_reason(&self) -> AbortReason {
        match self {
            CoordinatorError::Node { call: "setup", .. } => AbortReason::SetupRefused,
            CoordinatorError::Node { .. } | CoordinatorError::Connect { .. } => {
                AbortReason::NodeFailed
            }
            CoordinatorError::BadResponse { .. } => AbortReason::BadResponse,
            CoordinatorError::Protocol(ProtocolError::TooFewMatches) => AbortReason::ReleaseRefused,
            CoordinatorError::Protocol(_) => AbortReason::Protocol,
            _ => AbortReason::Coordinator,
        }
    }
}

/// A connected node.
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) client: NodeClient<Channel>,
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
    fn bad(&self, message: impl Into<String>) -> CoordinatorError {
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
) -> Result<Peer, CoordinatorError> {
    let err = |m: String| CoordinatorError::Connect {
        node: target.name.clone(),
        message: m,
    };
    let endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(|e| err(e.to_string()))?
        .tls_config(tls.client_config(&target.name))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(10));
    // A node that is still starting refuses connections for a moment: retry
    // refused connections (only those) for up to CONNECT_PATIENCE.
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let channel = loop {
        match endpoint.connect().await {
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
    })
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
                .expect("valid template")
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
    let peers = try_join_all(ordered.iter().map(|t| connect(t, tls))).await?;
    let sid = SessionId::random(&mut os_rng());
    let session = SessionRef {
        sid: sid.as_bytes().to_vec(),
        analysis_hash: hash.0.to_vec(),
    };
    info!(%sid, analysis = %analysis.name, %hash, "starting run");
    let progress = Progress::new(opts.progress);

    // Step 1: setup. A refusal here opened no session at that node; abort the others.
    let setup = progress.phase("setup", peers.len() as u64);
    let results = futures::future::join_all(peers.iter().map(|p| {
        let mut c = p.client.clone();
        let req = SetupRequest {
            session: Some(session.clone()),
            analysis_toml: analysis_text.to_string(),
        };
        let pb = setup.clone();
        async move {
            let r = c.setup(req).await.map_err(p.fail("setup"));
            pb.inc(1);
            r.and_then(|resp| {
                if resp.get_ref().party == p.name {
                    Ok(())
                } else {
                    Err(p.bad(format!("answered as party {:?}", resp.get_ref().party)))
                }
            })
        }
    }))
    .await;
    setup.finish();
    if let Some(e) = results.into_iter().find_map(Result::err) {
        abort(&peers, &session, &e).await;
        return Err(e);
    }

    let outcome = drive(&analysis, &peers, &session, &progress).await;
    match outcome {
        Ok(stored_as) => {
            finish(&peers, &session, None).await;
            info!(%sid, recipient = %analysis.recipient, "result delivered to the recipient's node");
            Ok(RunReport {
                sid,
                analysis_hash: hash,
                recipient: analysis.recipient.clone(),
                stored_as,
            })
        }
        Err(e) => {
            abort(&peers, &session, &e).await;
            Err(e)
        }
    }
}

async fn abort(peers: &[Peer], session: &SessionRef, e: &CoordinatorError) {
    let reason = e.abort_reason();
    // The coordinator's own log names the node and the class of failure; the
    // errors it logs carry no counts (ProtocolError::TooFewMatches has none).
    warn!(class = reason.as_str_name(), "run aborted: {e}");
    finish(peers, session, Some(reason)).await;
}

async fn finish(peers: &[Peer], session: &SessionRef, abort_reason: Option<AbortReason>) {
    for p in peers {
        let req = FinishRequest {
            session: Some(session.clone()),
            aborted: abort_reason.is_some(),
            reason: abort_reason.unwrap_or(AbortReason::Unspecified) as i32,
        };
        // Best effort: a node that never opened the session answers NotFound.
        let _ = p.client.clone().finish(req).await;
    }
}

/// Steps 2–6 once every node has accepted the session.
async fn drive(
    analysis: &Analysis,
    peers: &[Peer],
    session: &SessionRef,
    progress: &Progress,
) -> Result<String, CoordinatorError> {
    let n = peers.len();
    // Step 2: local step at every node, in parallel.
    let local = progress.phase("local step", n as u64);
    let layout = Layout::new(analysis);
    let lists = try_join_all(peers.iter().enumerate().map(|(i, p)| {
        let width = layout.row_width(i);
        let pb = local.clone();
        async move {
            let l = collect_list(p, session, width).await;
            pb.inc(1);
            l
        }
    }))
    .await?;
    local.finish();

    // Step 3: every list around the ring; lists travel concurrently.
    let total_hops: u64 = lists.iter().map(|l| l.len * (n as u64 - 1)).sum();
    let ringbar = progress.phase("blinding ring", total_hops);
    let finals = try_join_all(lists.iter().enumerate().map(|(owner, list)| {
        let pb = ringbar.clone();
        async move {
            let mut points = list.points.clone();
            for hop in ring::route(owner, n) {
                let out_len = if ring::is_final_pass(owner, hop, n) {
                    TRUNCATED_LEN
                } else {
                    POINT_LEN
                };
                points = reblind(&peers[hop], session, owner, &points, out_len, &pb).await?;
            }
            Ok::<_, CoordinatorError>(points)
        }
    }))
    .await?;
    ringbar.finish();

    // Steps 4–6: match, DP dummies, masked sums, release policy and noise,
    // all before anything is unmasked.
    let plan = plan_release(analysis, &lists, &finals, &mut os_rng())?;
    let release = progress.phase("release", n as u64 + 1);
    let sealed = try_join_all(lists.iter().enumerate().map(|(owner, list)| {
        let ask = plan.mask_sum_request(owner, list.len);
        let unmasker = &peers[ring::unmasker(owner, n)];
        let pb = release.clone();
        async move {
            if list.width == 0 {
                return Ok(Vec::new());
            }
            let req = MaskSumRequest {
                session: Some(session.clone()),
                owner: owner as u32,
                list_len: ask.list_len,
                positions: ask.positions,
                pad: ask.pad,
            };
            let r = unmasker
                .client
                .clone()
                .mask_sum(req)
                .await
                .map_err(unmasker.fail("mask sum"))?;
            pb.inc(1);
            Ok::<_, CoordinatorError>(r.into_inner().sealed)
        }
    }))
    .await?;

    // Step 6: deliver to the recipient's node, which unmasks and stores.
    let recipient = &peers[analysis
        .party_index(&analysis.recipient)
        .expect("validated recipient")];
    let req = DeliverRequest {
        session: Some(session.clone()),
        count: plan.count,
        sums: plan
            .sums
            .iter()
            .cloned()
            .zip(sealed)
            .map(|(masked_sum, sealed_mask_sum)| ListSum {
                masked_sum,
                sealed_mask_sum,
            })
            .collect(),
    };
    let resp = recipient
        .client
        .clone()
        .deliver(req)
        .await
        .map_err(recipient.fail("deliver"))?;
    release.inc(1);
    release.finish();
    Ok(resp.into_inner().stored_as)
}

async fn collect_list(
    p: &Peer,
    session: &SessionRef,
    width: usize,
) -> Result<PreparedList, CoordinatorError> {
    let req = LocalStepRequest {
        session: Some(session.clone()),
    };
    let mut stream = p
        .client
        .clone()
        .local_step(req)
        .await
        .map_err(p.fail("local step"))?
        .into_inner();
    let mut points = Vec::new();
    let mut masked = Vec::new();
    let mut dummies = Vec::new();
    let mut total = None;
    while let Some(chunk) = stream.message().await.map_err(p.fail("local step"))? {
        if *total.get_or_insert(chunk.total_rows) != chunk.total_rows {
            return Err(p.bad("inconsistent list length"));
        }
        if chunk.total_rows > MAX_LIST_ROWS {
            return Err(p.bad(format!("list longer than {MAX_LIST_ROWS} rows")));
        }
        if (points.len() + chunk.points.len()) as u64 > chunk.total_rows * POINT_LEN as u64 {
            return Err(p.bad("list longer than announced"));
        }
        if chunk.points.len() % POINT_LEN != 0
            || chunk.masked.len() != chunk.points.len() / POINT_LEN * width
        {
            return Err(p.bad("chunk sizes do not match the analysis"));
        }
        if !chunk.dummy_positions.is_empty() && !points.is_empty() {
            return Err(p.bad("dummy positions outside the first chunk"));
        }
        points.extend_from_slice(&chunk.points);
        masked.extend_from_slice(&chunk.masked);
        dummies.extend_from_slice(&chunk.dummy_positions);
    }
    let len = total.unwrap_or(0);
    if points.len() as u64 != len * POINT_LEN as u64 {
        return Err(p.bad("list shorter or longer than announced"));
    }
    let distinct: std::collections::HashSet<u64> = dummies.iter().copied().collect();
    if distinct.len() != dummies.len() || dummies.iter().any(|&d| d >= len) {
        return Err(p.bad("dummy positions must be distinct and inside the list"));
    }
    Ok(PreparedList {
        points,
        masked,
        len,
        width,
        dummies,
    })
}

async fn reblind(
    p: &Peer,
    session: &SessionRef,
    owner: usize,
    points: &[u8],
    out_len: usize,
    pb: &ProgressBar,
) -> Result<Vec<u8>, CoordinatorError> {
    let chunks: Vec<ReblindChunk> = points
        .chunks(CHUNK_POINTS * POINT_LEN)
        .map(|c| ReblindChunk {
            session: Some(session.clone()),
            owner: owner as u32,
            points: c.to_vec(),
        })
        .collect();
    let expected = points.len() / POINT_LEN * out_len;
    let mut stream = p
        .client
        .clone()
        .reblind(tokio_stream::iter(chunks))
        .await
        .map_err(p.fail("re-blind"))?
        .into_inner();
    let mut out = Vec::with_capacity(expected);
    while let Some(c) = stream.message().await.map_err(p.fail("re-blind"))? {
        pb.inc((c.points.len() / out_len) as u64);
        out.extend_from_slice(&c.points);
    }
    if out.len() != expected {
        return Err(p.bad(format!(
            "re-blinded list has {} bytes, expected {expected}",
            out.len()
        )));
    }
    Ok(out)
}
