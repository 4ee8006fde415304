//! Shared fixture of the gRPC integration tests: real node servers on
//! ephemeral loopback ports with mutual TLS, a real coordinator, CSV files
//! through DataFusion, every log line captured, and the plaintext join the
//! protocol must reproduce.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cleanroom_coordinator::demo::loopback_node_config;
use cleanroom_coordinator::{CoordinatorError, NodeTarget, RunOptions, RunReport, run_analysis};
use cleanroom_node::tls::{TlsMaterial, write_dev_certs};
use cleanroom_node::wiretap::WireTap;
use cleanroom_node::{NodeConfig, RunningNode, ServeOptions, Store};
use cleanroom_proto::v1::node_client::NodeClient;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tonic::transport::Endpoint;

// ---------------------------------------------------------------- log capture

#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of every node and coordinator in this test binary.
pub fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let w = buf.clone();
        // Our crates at every level; the HTTP/2, gRPC and TLS stacks at
        // INFO: their TRACE lines log frame and window sizes, numbers that
        // the secret-value scans of the log would match by chance.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "trace,h2=info,hyper=info,hyper_util=info,tonic=info,tower=info,rustls=info",
            ))
            .with_writer(move || w.clone())
            .with_ansi(false)
            .without_time()
            .init();
        buf
    })
}

/// Serializes the tests of one binary that inspect the shared log: each
/// holds this while it runs and reads only the log written meanwhile.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The current end of the shared log.
pub fn log_mark() -> usize {
    logs().0.lock().unwrap().len()
}

/// The shared log written since `mark`.
pub fn log_since(mark: usize) -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()[mark..]).into_owned()
}

pub fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------- fixtures

pub fn party(i: usize) -> String {
    format!("bank-{}", (b'a' + i as u8) as char)
}

/// Raw rows of one bank: (account, amount, flag). Accounts repeat.
pub type Rows = Vec<(String, u64)>;

pub struct Bank {
    pub rows: Rows,
}

/// Random banks over a shared universe of accounts, so they overlap partly.
pub fn banks(n: usize, seed: u64) -> Vec<Bank> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let rows = (0..400)
                .map(|_| {
                    let acct = format!(" ACC-{:04} ", rng.random_range(0..600u32)); // spaces: trimmed
                    (acct, rng.random_range(10_000_000..99_999_999u64))
                })
                .collect();
            Bank { rows }
        })
        .collect()
}

pub fn analysis_text(n: usize, recipient: usize, min_matched: u64) -> String {
    let mut t = format!("name = \"e2e\"\nrecipient = \"{}\"\n", party(recipient));
    let mut aggs = vec!["\"count\"".to_string()];
    for i in 0..n {
        t += &format!(
            "[parties.{}]\nsql = \"SELECT acct, sum(amount) AS amount, count(*) AS n FROM accounts GROUP BY acct\"\n",
            party(i)
        );
        aggs.push(format!("\"sum({}.amount)\"", party(i)));
        aggs.push(format!("\"sum({}.n)\"", party(i)));
    }
    t + &format!(
        "[output]\naggregates = [{}]\n[privacy]\nmin_matched = {min_matched}\n",
        aggs.join(", ")
    )
}

/// An ungrouped release's values, aggregate → value (to compare with
/// [`plaintext`]).
pub fn released(r: &cleanroom::protocol::Release) -> BTreeMap<String, i64> {
    r.rows[0]
        .values
        .iter()
        .map(|v| (v.aggregate.clone(), v.value))
        .collect()
}

/// The plaintext join the protocol must reproduce.
pub fn plaintext(banks: &[Bank]) -> BTreeMap<String, i64> {
    let grouped: Vec<BTreeMap<String, (u64, u64)>> = banks
        .iter()
        .map(|b| {
            let mut g: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for (a, v) in &b.rows {
                let e = g.entry(a.trim().to_string()).or_default();
                e.0 += v;
                e.1 += 1;
            }
            g
        })
        .collect();
    let common: BTreeSet<&String> = grouped[0]
        .keys()
        .filter(|k| grouped.iter().all(|g| g.contains_key(*k)))
        .collect();
    let mut out = BTreeMap::from([("count".to_string(), common.len() as i64)]);
    for (i, g) in grouped.iter().enumerate() {
        out.insert(
            format!("sum({}.amount)", party(i)),
            common.iter().map(|k| g[*k].0 as i64).sum(),
        );
        out.insert(
            format!("sum({}.n)", party(i)),
            common.iter().map(|k| g[*k].1 as i64).sum(),
        );
    }
    out
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub configs: Vec<NodeConfig>,
    pub nodes: Vec<RunningNode>,
}

/// A change to node `i`'s config before it starts.
pub type Tweak = Box<dyn Fn(usize, &mut NodeConfig)>;

/// How to start a cluster beyond the defaults.
#[derive(Default)]
pub struct Setup {
    /// Changes each node's config (by ring index) before it starts.
    pub tweak: Option<Tweak>,
    /// A wire tap per node (by ring index).
    pub taps: Vec<Arc<dyn WireTap>>,
}

impl Cluster {
    /// Starts one node per bank, each with its CSV, certificates from one
    /// dev CA, pinned peer keys, and `approved` analyses approved.
    pub async fn start(banks: &[Bank], approved: &[&str]) -> Cluster {
        Self::start_with(banks, approved, Setup::default()).await
    }

    /// [`Cluster::start`] with config changes and wire taps.
    pub async fn start_with(banks: &[Bank], approved: &[&str], setup: Setup) -> Cluster {
        logs();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let certs = dir.join("certs");
        let mut names: Vec<String> = (0..banks.len()).map(party).collect();
        names.extend([
            "coordinator".into(),
            "coordinator-2".into(),
            "intruder".into(),
        ]);
        write_dev_certs(&certs, &names).unwrap();
        let mut configs = Vec::new();
        for (i, b) in banks.iter().enumerate() {
            let csv = dir.join(format!("{}.csv", party(i)));
            let mut s = String::from("acct,amount\n");
            for (a, v) in &b.rows {
                s += &format!("{a},{v}\n");
            }
            std::fs::write(&csv, s).unwrap();
            let tables = BTreeMap::from([("accounts".to_string(), csv.into())]);
            configs.push(
                loopback_node_config(&dir, &certs, &party(i), tables, BTreeMap::new()).unwrap(),
            );
        }
        let publics: Vec<String> = configs
            .iter()
            .map(|c| c.identity().unwrap().public().to_hex())
            .collect();
        for (i, c) in configs.iter_mut().enumerate() {
            for (j, p) in publics.iter().enumerate() {
                if i != j {
                    c.peers.insert(party(j), p.clone());
                }
            }
            if let Some(t) = &setup.tweak {
                t(i, c);
            }
            for a in approved {
                Store::at(&c.state_dir)
                    .unwrap()
                    .approve(a, &c.name)
                    .unwrap();
            }
        }
        let mut nodes = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let opts = ServeOptions {
                tap: setup.taps.get(i).cloned(),
                ..ServeOptions::default()
            };
            nodes.push(cleanroom_node::spawn_with(c.clone(), opts).await.unwrap());
        }
        Cluster {
            dir: tmp,
            certs,
            configs,
            nodes,
        }
    }

    pub fn targets(&self) -> Vec<NodeTarget> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeTarget {
                name: party(i),
                url: format!("https://{}", n.addr),
            })
            .collect()
    }

    pub fn tls(&self, name: &str) -> TlsMaterial {
        TlsMaterial::from_dir(&self.certs, name).unwrap()
    }

    pub async fn run(&self, analysis: &str, as_name: &str) -> Result<RunReport, CoordinatorError> {
        run_analysis(
            analysis,
            &self.targets(),
            &self.tls(as_name),
            &RunOptions::default(),
        )
        .await
    }

    /// A raw gRPC client on node `i`, as the authorized coordinator.
    pub async fn client(&self, i: usize) -> NodeClient<tonic::transport::Channel> {
        self.client_as(i, "coordinator").await
    }

    /// A raw gRPC client on node `i` with the certificate `name`.
    pub async fn client_as(&self, i: usize, name: &str) -> NodeClient<tonic::transport::Channel> {
        let channel = Endpoint::from_shared(format!("https://{}", self.nodes[i].addr))
            .unwrap()
            .tls_config(self.tls(name).client_config(&party(i)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        NodeClient::new(channel)
    }

    /// Opens a fresh session of `analysis` at node `i` (its setup, as the
    /// coordinator): the session's reference and the node's answer.
    pub async fn open_session(
        &self,
        i: usize,
        analysis: &str,
    ) -> (
        cleanroom_proto::v1::SessionRef,
        cleanroom_proto::v1::SetupResponse,
    ) {
        let session = cleanroom_proto::v1::SessionRef {
            sid: cleanroom::SessionId::random(&mut cleanroom::session::os_rng())
                .as_bytes()
                .to_vec(),
            analysis_hash: cleanroom::Analysis::parse(analysis)
                .unwrap()
                .hash()
                .0
                .to_vec(),
        };
        let answer = self
            .client(i)
            .await
            .setup(cleanroom_proto::v1::SetupRequest {
                session: Some(session.clone()),
                analysis_toml: analysis.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        (session, answer)
    }

    pub fn results(&self, i: usize) -> Vec<cleanroom::protocol::Release> {
        Store::at(&self.configs[i].state_dir)
            .unwrap()
            .results()
            .unwrap()
    }

    pub fn state_dir(&self, i: usize) -> &Path {
        &self.configs[i].state_dir
    }

    pub async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await.unwrap();
        }
    }

    /// Node `i`'s store.
    pub fn store(&self, i: usize) -> Store {
        Store::at(self.state_dir(i)).unwrap()
    }
}

/// All text of a node's state: every row of every table of its database.
pub fn state_text(dir: &Path) -> String {
    let conn = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    let mut out = String::new();
    for table in ["approvals", "sessions", "ledger", "audit", "results"] {
        let mut st = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let cols = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for c in 0..cols {
                let v: rusqlite::types::Value = r.get(c).unwrap();
                out += &format!("{v:?} ");
            }
            out.push('\n');
        }
    }
    out
}

/// Whether `text` contains `n` as a whole number (not inside a longer run of
/// digits or letters, so hex ids do not count).
pub fn has_number(text: &str, n: i64) -> bool {
    let needle = n.to_string();
    text.match_indices(&needle).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + needle.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        // A '-' before a non-negative n makes it another (negative) number.
        let negated = n >= 0 && before == Some('-');
        !(word(before) || word(after) || negated)
    })
}
pub mod spark;
