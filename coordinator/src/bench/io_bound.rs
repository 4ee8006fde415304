//! The I/O bound of a keyed-prf run, measured on this machine in the same
//! run: what the run cannot avoid once the matching costs no curve
//! arithmetic. Three parts, each measured alone with every party's share of
//! it at once (as in the run):
//!
//! * **SQL**: every party's query over its table in the node's engine
//!   (DataFusion), to protocol row batches (canonical key encoding
//!   included), all parties concurrently;
//! * **hashing**: every party's keys tagged ([`cleanroom::prf::Tagger`], all
//!   cores);
//! * **transport**: every party's list, as the same `ListChunk` messages
//!   (4096 tags and masked values each), streamed at once over loopback
//!   mutual-TLS gRPC from a stand-in node that does nothing else to a
//!   client that decodes and drops them: one connection per list (as each
//!   node has its own) and each list read on its own task (as the
//!   coordinator reads them).
//!
//! The bound is their sum; a run also shuffles, masks, matches and sums,
//! which this leaves out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use cleanroom::prf::{GroupKey, TAG_LEN};
use cleanroom::protocol::RowBatch;
use cleanroom::session::os_rng;
use cleanroom::{Analysis, SessionId};
use cleanroom_node::config::{EngineConfig, TableSource};
use cleanroom_node::engine::Engine;
use cleanroom_node::tls::TlsMaterial;
use cleanroom_proto::v1::node_server::{Node, NodeServer};
use cleanroom_proto::v1::*;
use cleanroom_proto::{CHUNK_POINTS, MAX_MESSAGE_BYTES};
use futures::StreamExt;
use futures::future::try_join_all;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

/// Wall seconds of each part of the I/O bound.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IoBound {
    /// Every party's query, at once.
    pub sql: f64,
    /// Every party's keys tagged.
    pub hashing: f64,
    /// Every party's list over loopback mTLS gRPC, at once.
    pub transport: f64,
}

impl IoBound {
    /// The bound: the sum of the parts.
    pub fn total(&self) -> f64 {
        self.sql + self.hashing + self.transport
    }

    /// Measures the bound of a run of `analysis` over `tables` (one per
    /// party, ring order, the table `t` of the benchmark's queries), with
    /// the certificates in `certs` (`bank-a` serves, `coordinator` reads).
    /// Runs on the current tokio runtime (call it from a blocking thread).
    pub fn measure(analysis: &Analysis, tables: &[PathBuf], certs: &Path) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        // SQL: all parties at once, the batches kept for hashing.
        let t = Instant::now();
        let batches: Vec<Vec<RowBatch>> = rt.block_on(try_join_all(
            analysis
                .parties
                .iter()
                .zip(tables)
                .map(|(p, table)| query(analysis, &p.name, table)),
        ))?;
        let sql = t.elapsed().as_secs_f64();
        // Hashing: every key of every party.
        let sid = SessionId::random(&mut os_rng());
        let tagger = GroupKey::random(&mut os_rng()).tagger(&sid);
        let t = Instant::now();
        for b in batches.iter().flatten() {
            let keys: Vec<&[u8]> = (0..b.len()).map(|r| b.key(r)).collect();
            std::hint::black_box(tagger.tag_keys(&keys));
        }
        let hashing = t.elapsed().as_secs_f64();
        // Transport: each party's list, as ListChunks, at once.
        let lists: Vec<(u64, usize)> = analysis
            .parties
            .iter()
            .zip(&batches)
            .map(|(p, b)| {
                let rows = b.iter().map(|b| b.len() as u64).sum();
                (rows, analysis.features(&p.name).len())
            })
            .collect();
        drop(batches);
        let transport = rt.block_on(transport(&lists, certs))?;
        Ok(IoBound {
            sql,
            hashing,
            transport,
        })
    }
}

/// Runs one party's query in the node's engine, as a node's local step
/// does, and collects its row batches.
async fn query(analysis: &Analysis, party: &str, table: &Path) -> Result<Vec<RowBatch>> {
    let engine = Engine::from_config(&EngineConfig::default())?;
    let tables = BTreeMap::from([("t".to_string(), TableSource::from(table.to_path_buf()))]);
    let mut rows = engine
        .open(&tables)
        .await?
        .plan(analysis, party)
        .await?
        .run()
        .await?;
    let mut out = Vec::new();
    while let Some(b) = rows.next().await {
        out.push(b?);
    }
    Ok(out)
}

/// Streams `(rows, width)` lists at once over loopback mTLS gRPC; returns
/// the wall seconds from the first call to the last chunk decoded.
async fn transport(lists: &[(u64, usize)], certs: &Path) -> Result<f64> {
    let server_tls = TlsMaterial::from_dir(certs, "bank-a")?;
    let client_tls = TlsMaterial::from_dir(certs, "coordinator")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let svc = NodeServer::new(StandIn)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Stopped when this function returns, on success or error alike.
    let mut server = JoinSet::new();
    server.spawn(
        Server::builder()
            .tls_config(server_tls.server_config())?
            .add_service(svc)
            .serve_with_incoming(cleanroom_node::server::accept(listener)),
    );
    // One connection per list, as each node has its own in a run, each
    // list read and decoded on its own task, as the coordinator does.
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(client_tls.client_config("bank-a"))?;
    let mut channels = Vec::with_capacity(lists.len());
    for _ in lists {
        channels.push(
            endpoint
                .connect()
                .await
                .context("connecting to the stand-in node")?,
        );
    }
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for (&(rows, width), channel) in lists.iter().zip(channels) {
        let mut client =
            node_client::NodeClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        tasks.spawn(async move {
            // The stand-in reads the list's shape from the session ref.
            let mut shape = rows.to_be_bytes().to_vec();
            shape.extend_from_slice(&(width as u64).to_be_bytes());
            let mut stream = client
                .local_step(LocalStepRequest {
                    session: Some(SessionRef {
                        sid: shape,
                        analysis_hash: Vec::new(),
                    }),
                    ..LocalStepRequest::default()
                })
                .await?
                .into_inner();
            let mut got = 0u64;
            while let Some(c) = stream.message().await? {
                got += (c.points.len() / TAG_LEN) as u64;
            }
            anyhow::ensure!(got == rows, "the stand-in sent {got} of {rows} rows");
            Ok::<_, anyhow::Error>(())
        });
    }
    // Any error ends the measurement (the other tasks are dropped, so
    // aborted).
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seconds = t.elapsed().as_secs_f64();
    drop(server);
    Ok(seconds)
}

/// A node that answers a LocalStep with a list of the requested shape
/// (rows and width in the session id's bytes), in `ListChunk`s of
/// [`CHUNK_POINTS`] pseudorandom tags and masked values, and nothing else.
struct StandIn;

type Stream_<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

fn unused<T>() -> Result<T, Status> {
    Err(Status::unimplemented("stand-in node for the I/O bound"))
}

#[tonic::async_trait]
impl Node for StandIn {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        unused()
    }
    async fn catalog(
        &self,
        _: Request<CatalogRequest>,
    ) -> Result<Response<CatalogResponse>, Status> {
        unused()
    }
    async fn setup(&self, _: Request<SetupRequest>) -> Result<Response<SetupResponse>, Status> {
        unused()
    }

    type LocalStepStream = Stream_<ListChunk>;

    async fn local_step(
        &self,
        req: Request<LocalStepRequest>,
    ) -> Result<Response<Self::LocalStepStream>, Status> {
        let shape = req
            .into_inner()
            .session
            .map(|s| s.sid)
            .filter(|s| s.len() == 16)
            .ok_or_else(|| Status::invalid_argument("no list shape"))?;
        let word = |i: usize| u64::from_be_bytes(shape[i..i + 8].try_into().unwrap_or([0; 8]));
        let (rows, width) = (word(0), word(8) as usize);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            // Uniform bytes and words, as tags and masked values are (so
            // the varints of the masked values are as long as in a run).
            let mut rng = ChaCha20Rng::from_seed([7; 32]);
            let mut sent = 0u64;
            while sent < rows {
                let k = (rows - sent).min(CHUNK_POINTS as u64) as usize;
                let mut points = vec![0u8; k * TAG_LEN];
                rng.fill_bytes(&mut points);
                let masked = (0..k * width).map(|_| rng.next_u64()).collect();
                let chunk = ListChunk {
                    points,
                    masked,
                    total_rows: rows,
                    ..ListChunk::default()
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                sent += k as u64;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ReblindStream = Stream_<PointChunk>;

    async fn reblind(
        &self,
        _: Request<Streaming<ReblindChunk>>,
    ) -> Result<Response<Self::ReblindStream>, Status> {
        unused()
    }
    async fn mask_sum(
        &self,
        _: Request<MaskSumRequest>,
    ) -> Result<Response<MaskSumResponse>, Status> {
        unused()
    }
    async fn deliver(
        &self,
        _: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        unused()
    }
    async fn finish(&self, _: Request<FinishRequest>) -> Result<Response<FinishResponse>, Status> {
        unused()
    }
}
