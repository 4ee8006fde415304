//! End to end over gRPC: real node servers on ephemeral loopback ports with
//! mutual TLS, a real coordinator, CSV files through DataFusion. Results
//! stored at the recipient's node must equal a plaintext join computed here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cleanroom::session::os_rng;
use cleanroom::{Analysis, SessionId};
use cleanroom_coordinator::demo::loopback_node_config;
use cleanroom_coordinator::{CoordinatorError, NodeTarget, RunOptions, RunReport, run_analysis};
use cleanroom_node::tls::{TlsMaterial, write_dev_certs};
use cleanroom_node::{NodeConfig, RunningNode, StateDir};
use cleanroom_proto::v1::node_client::NodeClient;
use cleanroom_proto::v1::{SessionRef, SetupRequest};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tonic::Code;
use tonic::transport::Endpoint;

// ---------------------------------------------------------------- log capture

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

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
fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_writer(move || w.clone())
            .with_ansi(false)
            .init();
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------- fixtures

fn party(i: usize) -> String {
    format!("bank-{}", (b'a' + i as u8) as char)
}

/// Raw rows of one bank: (account, amount, flag). Accounts repeat.
type Rows = Vec<(String, u64)>;

struct Bank {
    rows: Rows,
}

/// Random banks over a shared universe of accounts, so they overlap partly.
fn banks(n: usize, seed: u64) -> Vec<Bank> {
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

fn analysis_text(n: usize, recipient: usize, min_matched: u64) -> String {
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

/// The plaintext join the protocol must reproduce.
fn plaintext(banks: &[Bank]) -> BTreeMap<String, i64> {
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

struct Cluster {
    dir: tempfile::TempDir,
    certs: PathBuf,
    configs: Vec<NodeConfig>,
    nodes: Vec<RunningNode>,
}

impl Cluster {
    /// Starts one node per bank, each with its CSV, certificates from one
    /// dev CA, pinned peer keys, and `approved` analyses approved.
    async fn start(banks: &[Bank], approved: &[&str]) -> Cluster {
        logs();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let certs = dir.join("certs");
        let mut names: Vec<String> = (0..banks.len()).map(party).collect();
        names.extend(["coordinator".into(), "intruder".into()]);
        write_dev_certs(&certs, &names).unwrap();
        let mut configs = Vec::new();
        for (i, b) in banks.iter().enumerate() {
            let csv = dir.join(format!("{}.csv", party(i)));
            let mut s = String::from("acct,amount\n");
            for (a, v) in &b.rows {
                s += &format!("{a},{v}\n");
            }
            std::fs::write(&csv, s).unwrap();
            let tables = BTreeMap::from([("accounts".to_string(), csv)]);
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
            for a in approved {
                StateDir::open(&c.state_dir)
                    .unwrap()
                    .approve(a, &c.name)
                    .unwrap();
            }
        }
        let mut nodes = Vec::new();
        for c in &configs {
            nodes.push(cleanroom_node::spawn(c.clone()).await.unwrap());
        }
        Cluster {
            dir: tmp,
            certs,
            configs,
            nodes,
        }
    }

    fn targets(&self) -> Vec<NodeTarget> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeTarget {
                name: party(i),
                url: format!("https://{}", n.addr),
            })
            .collect()
    }

    fn tls(&self, name: &str) -> TlsMaterial {
        TlsMaterial::from_dir(&self.certs, name).unwrap()
    }

    async fn run(&self, analysis: &str, as_name: &str) -> Result<RunReport, CoordinatorError> {
        run_analysis(
            analysis,
            &self.targets(),
            &self.tls(as_name),
            &RunOptions::default(),
        )
        .await
    }

    /// A raw gRPC client on node `i`, as the authorized coordinator.
    async fn client(&self, i: usize) -> NodeClient<tonic::transport::Channel> {
        let channel = Endpoint::from_shared(format!("https://{}", self.nodes[i].addr))
            .unwrap()
            .tls_config(self.tls("coordinator").client_config(&party(i)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        NodeClient::new(channel)
    }

    fn results(&self, i: usize) -> Vec<cleanroom::protocol::Release> {
        StateDir::open(&self.configs[i].state_dir)
            .unwrap()
            .results()
            .unwrap()
    }

    fn state_dir(&self, i: usize) -> &Path {
        &self.configs[i].state_dir
    }

    async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await.unwrap();
        }
    }
}

async fn check_run(n: usize, recipient: usize, seed: u64) {
    let banks = banks(n, seed);
    let text = analysis_text(n, recipient, 1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    let report = cluster
        .run(&text, "coordinator")
        .await
        .expect("run succeeds");
    let want = plaintext(&banks);
    assert!(want["count"] > 10, "fixture should overlap: {want:?}");

    // The recipient's node holds exactly the plaintext join's numbers.
    let stored = StateDir::open(cluster.state_dir(recipient))
        .unwrap()
        .result(&report.sid)
        .unwrap();
    let got: BTreeMap<String, i64> = stored
        .values
        .iter()
        .map(|v| (v.aggregate.clone(), v.value))
        .collect();
    assert_eq!(got, want);
    assert!(!stored.noisy);
    assert_eq!(
        stored.analysis_hash,
        Analysis::parse(&text).unwrap().hash().to_hex()
    );
    // Nobody else stored anything.
    for i in (0..n).filter(|&i| i != recipient) {
        assert!(cluster.results(i).is_empty());
    }
    // Nothing the coordinator returns or any party logs contains a released sum.
    let held = format!("{report:?}");
    let log = log_text();
    for (k, v) in want.iter().filter(|(k, _)| k.contains("amount")) {
        assert!(
            !held.contains(&v.to_string()),
            "coordinator report holds {k}"
        );
        assert!(!log.contains(&v.to_string()), "a log line contains {k}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_banks_match_plaintext_join() {
    check_run(2, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_banks_match_plaintext_join() {
    check_run(3, 0, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_analysis_is_refused_and_nothing_released() {
    let banks = banks(2, 3);
    let approved = analysis_text(2, 1, 1);
    let other = analysis_text(2, 1, 2); // differs: min_matched
    let cluster = Cluster::start(&banks, &[&approved]).await;
    let err = cluster.run(&other, "coordinator").await.unwrap_err();
    let hash = Analysis::parse(&other).unwrap().hash().to_hex();
    match err {
        CoordinatorError::Node {
            call,
            code,
            message,
            ..
        } => {
            assert_eq!(call, "setup");
            assert_eq!(code, Code::FailedPrecondition);
            assert!(message.contains(&hash), "error names the hash: {message}");
        }
        e => panic!("unexpected error {e}"),
    }
    assert!(cluster.results(1).is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_certificates_are_refused() {
    let banks = banks(2, 4);
    let text = analysis_text(2, 1, 1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    // Signed by the right CA, but not an authorized coordinator name.
    match cluster.run(&text, "intruder").await.unwrap_err() {
        CoordinatorError::Node { code, .. } => assert_eq!(code, Code::PermissionDenied),
        e => panic!("unexpected error {e}"),
    }
    // A bank's own certificate is not a coordinator's either.
    match cluster.run(&text, "bank-a").await.unwrap_err() {
        CoordinatorError::Node { code, .. } => assert_eq!(code, Code::PermissionDenied),
        e => panic!("unexpected error {e}"),
    }
    // A "coordinator" certificate from a different CA fails the TLS handshake.
    let rogue = cluster.dir.path().join("rogue");
    write_dev_certs(&rogue, &["coordinator".into()]).unwrap();
    let mut tls = TlsMaterial::from_dir(&rogue, "coordinator").unwrap();
    tls.ca_pem = cluster.tls("coordinator").ca_pem; // it trusts the nodes, they do not trust it
    let err = run_analysis(&text, &cluster.targets(), &tls, &RunOptions::default())
        .await
        .unwrap_err();
    // Under TLS 1.3 the server rejects the client certificate after the
    // client considers the handshake done, so tonic reports it at connect
    // time or as a failed (unavailable / cancelled) first call.
    assert!(
        matches!(
            err,
            CoordinatorError::Connect { .. }
                | CoordinatorError::Node {
                    code: Code::Unavailable | Code::Unknown | Code::Cancelled,
                    ..
                }
        ),
        "{err}"
    );
    assert!(cluster.results(1).is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_session_id_is_refused() {
    let banks = banks(2, 5);
    let text = analysis_text(2, 1, 1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    let mut client = cluster.client(0).await;
    let req = SetupRequest {
        session: Some(SessionRef {
            sid: SessionId::random(&mut os_rng()).as_bytes().to_vec(),
            analysis_hash: Analysis::parse(&text).unwrap().hash().0.to_vec(),
        }),
        analysis_toml: text.clone(),
    };
    client
        .setup(req.clone())
        .await
        .expect("first use of the sid");
    let err = client.setup(req).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(cluster.results(1).is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_matches_release_nothing() {
    let banks = banks(2, 6);
    let want = plaintext(&banks);
    let text = analysis_text(2, 1, want["count"] as u64 + 1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    let err = cluster.run(&text, "coordinator").await.unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::Protocol(cleanroom::protocol::ProtocolError::TooFewMatches { .. })
        ),
        "{err}"
    );
    assert!(cluster.results(1).is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_output_is_a_clear_error() {
    let banks = banks(2, 7);
    // Bank B's "amount" feature is a float: refused, naming the column.
    let text = analysis_text(2, 1, 1).replacen(
        "sum(amount) AS amount, count(*) AS n FROM accounts GROUP BY acct\"\n[output]",
        "CAST(sum(amount) AS DOUBLE) AS amount, count(*) AS n FROM accounts GROUP BY acct\"\n[output]",
        1,
    );
    assert_ne!(text, analysis_text(2, 1, 1));
    let cluster = Cluster::start(&banks, &[&text]).await;
    match cluster.run(&text, "coordinator").await.unwrap_err() {
        CoordinatorError::Node {
            node,
            code,
            message,
            ..
        } => {
            assert_eq!(node, "bank-b");
            assert_eq!(code, Code::FailedPrecondition);
            assert!(message.contains("\"amount\""), "{message}");
        }
        e => panic!("unexpected error {e}"),
    }
    assert!(cluster.results(1).is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_metadata_only() {
    let banks = banks(2, 8);
    let cluster = Cluster::start(&banks, &[]).await;
    let mut client = cluster.client(0).await;
    let health = client
        .health(cleanroom_proto::v1::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.party, "bank-a");
    let cat = client
        .catalog(cleanroom_proto::v1::CatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cat.tables.len(), 1);
    let t = &cat.tables[0];
    assert_eq!(t.name, "accounts");
    let cols: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cols, ["acct", "amount"]);
    assert_eq!(t.approx_rows, 400);
    // No value from the table appears in the answer.
    let text = format!("{cat:?}");
    assert!(!text.contains("ACC-") && !text.contains(&banks[0].rows[0].1.to_string()));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_matches_plaintext_truth() {
    logs();
    let (release, truth) = cleanroom_coordinator::demo::run_demo(false).await.unwrap();
    let got: BTreeMap<String, i64> = release
        .values
        .iter()
        .map(|v| (v.aggregate.clone(), v.value))
        .collect();
    assert_eq!(got, truth);
    assert!(truth["count"] >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_run_over_grpc_hides_count_and_releases_noisy_values() {
    let banks = banks(2, 9);
    // Caps above every per-key value, so nothing is clamped.
    let bounds = "[privacy.bounds]\n\"bank-a.amount\" = 1000000000\n\"bank-a.n\" = 100\n\"bank-b.amount\" = 1000000000\n\"bank-b.n\" = 100\n";
    // A huge epsilon: the count and the n sums get zero noise with
    // overwhelming probability, the amount sums noise of scale 1e3; the
    // values must equal the plaintext join through the dummy rows.
    let exact = analysis_text(2, 1, 1).replace(
        "min_matched = 1\n",
        &format!("min_matched = 1\nepsilon = 1000000.0\n{bounds}"),
    );
    let noisy = analysis_text(2, 1, 1).replace(
        "min_matched = 1\n",
        &format!("min_matched = 1\nepsilon = 0.5\n{bounds}"),
    );
    let cluster = Cluster::start(&banks, &[&exact, &noisy]).await;
    let want = plaintext(&banks);
    let r = cluster.run(&exact, "coordinator").await.unwrap();
    let stored = StateDir::open(cluster.state_dir(1))
        .unwrap()
        .result(&r.sid)
        .unwrap();
    assert!(stored.noisy);
    for v in &stored.values {
        let tolerance = if v.aggregate.contains("amount") {
            100_000
        } else {
            0
        };
        assert!(
            (v.value - want[&v.aggregate]).abs() <= tolerance,
            "{}: {} vs {}",
            v.aggregate,
            v.value,
            want[&v.aggregate]
        );
    }
    // A real epsilon: the amount sums carry noise of scale 2e9.
    let r = cluster.run(&noisy, "coordinator").await.unwrap();
    let stored = StateDir::open(cluster.state_dir(1))
        .unwrap()
        .result(&r.sid)
        .unwrap();
    let amount = stored
        .values
        .iter()
        .find(|v| v.aggregate == "sum(bank-a.amount)")
        .unwrap()
        .value;
    assert_ne!(amount, want["sum(bank-a.amount)"]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_sessions_expire() {
    use cleanroom_node::clock::ManualClock;
    use cleanroom_proto::v1::LocalStepRequest;

    let banks = banks(2, 10);
    let text = analysis_text(2, 1, 1);
    let mut cluster = Cluster::start(&banks, &[&text]).await;
    // Restart bank-a with a clock the test controls.
    let clock = Arc::new(ManualClock::default());
    let old = cluster.nodes.remove(0);
    old.shutdown().await.unwrap();
    let mut cfg = cluster.configs[0].clone();
    cfg.session_ttl_secs = 60;
    cluster.nodes.insert(
        0,
        cleanroom_node::spawn_with_clock(cfg, clock.clone())
            .await
            .unwrap(),
    );

    let mut client = cluster.client(0).await;
    let session = SessionRef {
        sid: SessionId::random(&mut os_rng()).as_bytes().to_vec(),
        analysis_hash: Analysis::parse(&text).unwrap().hash().0.to_vec(),
    };
    let setup = SetupRequest {
        session: Some(session.clone()),
        analysis_toml: text.clone(),
    };
    client.setup(setup).await.unwrap();
    clock.advance(std::time::Duration::from_secs(61));
    let err = client
        .local_step(LocalStepRequest {
            session: Some(session),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("expired"), "{}", err.message());
    cluster.stop().await;
}
