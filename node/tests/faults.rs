//! Faults with real `cleanroom-node serve` processes on loopback: a node
//! stopped (SIGSTOP) or killed mid-run, the coordinator's process killed
//! mid-run, expired certificates, a graceful SIGTERM, the standard health
//! service, and node memory after load. Each run must fail
//! with an error naming the node and the phase, release nothing, and leave
//! budget and audit state consistent.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleanroom_coordinator::{
    CoordinatorError, Deadlines, PhaseEdge, PhaseHook, RunOptions, run_analysis,
};
use cleanroom_node::tls::{DevCa, TlsMaterial};
use cleanroom_proto::v1::node_client::NodeClient;
use cleanroom_proto::v1::{SessionRef, SetupRequest};
use common::*;

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Sends `sig` to `pid` when the run's `stream` phase starts (after every
/// node accepted the session).
fn at_stream_start(pid: u32, sig: &'static str) -> PhaseHook {
    Arc::new(move |phase: &str, edge: PhaseEdge| {
        if phase == "stream" && edge == PhaseEdge::Start {
            signal(pid, sig);
        }
    })
}

fn short_deadlines() -> Deadlines {
    let mut d = Deadlines::default();
    d.set("stall=3").unwrap();
    d.set("finish=2").unwrap();
    d
}

/// Two banks serving from `dir`; a run with short deadlines in which bank-b
/// gets `sig` as the stream phase starts. Returns the run's error and both
/// servers (alive until dropped).
async fn run_signalling_bank_b(
    dir: &Path,
    sig: &'static str,
) -> (CoordinatorError, Server, Server) {
    two_banks(dir, ANALYSIS);
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();
    let (a, addr_a) = serve(dir, "a.toml");
    let (b, addr_b) = serve(dir, "b.toml");
    let err = run_analysis(
        ANALYSIS,
        &targets(&addr_a, &addr_b),
        &tls,
        &RunOptions {
            on_phase: Some(at_stream_start(b.0.id(), sig)),
            deadlines: short_deadlines(),
            ..RunOptions::default()
        },
    )
    .await
    .unwrap_err();
    (err, a, b)
}

/// The audit records of a node, as JSON.
fn audit(dir: &Path, config: &str) -> Vec<serde_json::Value> {
    ok(node(dir, &["audit", "export", "--config", config]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Nothing stored at the recipient (bank-b), both audit chains intact, and
/// bank-a's session ended with `outcome` recorded.
fn nothing_released(dir: &Path, outcome: &str) {
    assert!(
        ok(node(dir, &["results", "--config", "b.toml"])).is_empty(),
        "nothing released"
    );
    for cfg in ["a.toml", "b.toml"] {
        assert!(ok(node(dir, &["audit", "verify", "--config", cfg])).contains("intact"));
    }
    let a = audit(dir, "a.toml");
    assert!(
        a.iter()
            .any(|r| r["outcome"].as_str().is_some_and(|o| o.contains(outcome))),
        "bank-a records {outcome:?}: {a:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_fails_the_run_within_its_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = Instant::now();
    let (err, _a, b) = run_signalling_bank_b(dir, "STOP").await;
    // Not a timing assertion: a hang would block far longer than this.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        matches!(&err, CoordinatorError::Stalled { node, .. } if node == "bank-b"),
        "{err}"
    );
    assert!(err.to_string().contains("stalled in"), "{err}");
    signal(b.0.id(), "CONT");
    nothing_released(dir, "ABORT_REASON_TIMEOUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_fails_the_run_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (err, _a, b) = run_signalling_bank_b(dir, "KILL").await;
    assert!(err.to_string().contains("node bank-b"), "{err}");
    drop(b);
    nothing_released(dir, "ABORT_REASON_");
}

/// The `cleanroom-coordinator` binary, built beside this package's binary
/// by `cargo test --workspace`.
fn coordinator_bin() -> PathBuf {
    let bin = Path::new(BIN).with_file_name("cleanroom-coordinator");
    assert!(
        bin.is_file(),
        "{} not built: run `cargo test --workspace` (or build -p cleanroom-coordinator)",
        bin.display()
    );
    bin
}

/// The coordinator's process is killed (SIGKILL) as the stream phase
/// starts: each node's sweep expires the session after its idle TTL, drops
/// its secrets and records the expiry; nothing is released; the sid cannot
/// be resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_leaves_sessions_to_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_banks(dir, ANALYSIS);
    for cfg in ["a.toml", "b.toml"] {
        let path = dir.join(cfg);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("session_ttl_secs = 10\n{text}")).unwrap();
    }
    let (_a, addr_a) = serve(dir, "a.toml");
    let (_b, addr_b) = serve(dir, "b.toml");
    let mut child = Command::new(coordinator_bin())
        .args([
            "run",
            "--analysis",
            "analysis.toml",
            "--tls-dir",
            "certs",
            "--events",
        ])
        .args(["--node", &format!("bank-a=https://{addr_a}")])
        .args(["--node", &format!("bank-b=https://{addr_b}")])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let coordinator = Server(child);
    for line in stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if event["phase"] == "stream" && event["edge"] == "start" {
            break;
        }
    }
    signal(coordinator.0.id(), "KILL");
    drop(coordinator);
    // Expired within TTL + a sweep; well under a minute.
    let expired = |cfg: &str| audit(dir, cfg).iter().any(|r| r["event"] == "expire");
    let start = Instant::now();
    while !(expired("a.toml") && expired("b.toml")) {
        assert!(start.elapsed() < Duration::from_secs(60), "not expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    nothing_released(dir, "expired unfinished; nothing released");
    // The session cannot be resumed at either node: its sid is spent.
    let records = audit(dir, "a.toml");
    let setup = records.iter().find(|r| r["event"] == "setup").unwrap();
    let sid = hex::decode(setup["sid"].as_str().unwrap()).unwrap();
    for (addr, server) in [(&addr_a, "bank-a"), (&addr_b, "bank-b")] {
        assert_eq!(
            setup_again(dir, addr, server, sid.clone(), ANALYSIS).await,
            tonic::Code::AlreadyExists
        );
    }
}

/// Certificates past their validity are refused both ways, though signed by
/// the right CA for the right name: a coordinator's expired client
/// certificate fails the handshake at the node, and a node's expired server
/// certificate fails the coordinator's connect, naming that node. Nothing is
/// released and no session is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_banks(dir, ANALYSIS);
    let certs = dir.join("certs");
    let expired = dir.join("expired");
    let past = Some((
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2021, 1, 1),
    ));
    let ca = DevCa::load(&certs).unwrap();
    ca.issue(&expired, "coordinator", past).unwrap();
    ca.issue(&expired, "bank-b", past).unwrap();
    let expired_tls = |name: &str| {
        TlsMaterial::load(
            &expired.join(format!("{name}.pem")),
            &expired.join(format!("{name}.key")),
            &certs.join("ca.pem"),
        )
        .unwrap()
    };

    // The coordinator's certificate has expired.
    let (_a, addr_a) = serve(dir, "a.toml");
    let (b, addr_b) = serve(dir, "b.toml");
    let err = run_analysis(
        ANALYSIS,
        &targets(&addr_a, &addr_b),
        &expired_tls("coordinator"),
        &RunOptions::default(),
    )
    .await
    .unwrap_err();
    // Under TLS 1.3 the server rejects a client certificate after the
    // client considers the handshake done: a connect error or a failed
    // first call.
    assert!(
        matches!(
            err,
            CoordinatorError::Connect { .. }
                | CoordinatorError::Node {
                    code: tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled,
                    ..
                }
        ),
        "{err}"
    );
    drop(b);

    // Bank-b's server certificate has expired.
    let text = std::fs::read_to_string(dir.join("b.toml")).unwrap();
    std::fs::write(
        dir.join("b-expired.toml"),
        text.replace("certs/bank-b.", "expired/bank-b."),
    )
    .unwrap();
    let (_b, addr_b) = serve(dir, "b-expired.toml");
    let tls = TlsMaterial::from_dir(&certs, "coordinator").unwrap();
    let err = run_analysis(
        ANALYSIS,
        &targets(&addr_a, &addr_b),
        &tls,
        &RunOptions::default(),
    )
    .await
    .unwrap_err();
    match &err {
        CoordinatorError::Connect { node, .. } => assert_eq!(node, "bank-b", "{err}"),
        e => panic!("expected a connect error naming bank-b, got {e}"),
    }
    assert!(
        ok(node(dir, &["results", "--config", "b.toml"])).is_empty(),
        "nothing released"
    );
    // Bank-a may have opened the session before bank-b failed; if so it was
    // aborted. Bank-b never saw one.
    assert!(
        audit(dir, "b.toml").iter().all(|r| r["event"] != "setup"),
        "no session at bank-b"
    );
}

/// The health service answers SERVING over mutual TLS; SIGTERM stops the
/// node gracefully: the open session is aborted and recorded, the process
/// exits 0, and the audit chain is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_and_graceful_sigterm() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_banks(dir, ANALYSIS);
    let (mut a, addr_a) = serve(dir, "a.toml");
    let channel = connect(dir, &addr_a, "bank-a").await;
    for service in ["", "cleanroom.v1.Node"] {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let sid = cleanroom::SessionId::random(&mut cleanroom::session::os_rng());
    NodeClient::new(channel)
        .setup(SetupRequest {
            session: Some(SessionRef {
                sid: sid.as_bytes().to_vec(),
                analysis_hash: cleanroom::Analysis::parse(ANALYSIS)
                    .unwrap()
                    .hash()
                    .0
                    .to_vec(),
            }),
            analysis_toml: ANALYSIS.to_string(),
        })
        .await
        .unwrap();
    signal(a.0.id(), "TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = a.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    let records = audit(dir, "a.toml");
    let last = records.last().unwrap();
    assert_eq!(last["event"], "abort", "{last}");
    assert_eq!(last["sid"], sid.to_hex());
    assert!(
        last["outcome"].as_str().unwrap().contains("shut down"),
        "{last}"
    );
    assert!(ok(node(dir, &["audit", "verify", "--config", "a.toml"])).contains("intact"));
}

/// Resident memory of a process, in bytes (Linux `/proc`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Load against real node processes: 20 analyses in a row and 4 at once
/// over 30 000 keys per bank all equal the plaintext join, and afterwards
/// each node's resident memory is back at its idle level (measured after
/// two warm-up runs), within allocator slack far below what the finished
/// sessions' lists would hold if any were kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_memory_returns_to_idle_after_load() {
    const KEYS: u64 = 30_000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // bank-a holds accounts [0, KEYS), bank-b [KEYS/2, 3·KEYS/2).
    let mut want = (0i64, 0i64, 0i64);
    for (bank, lo) in [("bank-a", 0), ("bank-b", KEYS / 2)] {
        let mut csv = String::from("acct,amount\n");
        for k in lo..lo + KEYS {
            let amount = k % 997 + 1;
            csv += &format!("{k},{amount}\n");
            if (KEYS / 2..KEYS).contains(&k) {
                if bank == "bank-a" {
                    want.0 += 1;
                    want.1 += amount as i64;
                } else {
                    want.2 += amount as i64;
                }
            }
        }
        std::fs::write(dir.join(format!("{bank}.csv")), csv).unwrap();
    }
    let analysis = "name = \"load\"\nrecipient = \"bank-b\"\nkey = [\"integer\"]\n\
        [parties.bank-a]\nsql = \"SELECT acct, amount FROM accounts\"\n\
        [parties.bank-b]\nsql = \"SELECT acct, amount FROM accounts\"\n\
        [output]\naggregates = [\"count\", \"sum(bank-a.amount)\", \"sum(bank-b.amount)\"]\n\
        [privacy]\nmin_matched = 1\n";
    two_banks(dir, analysis);
    for (cfg, bank) in [("a.toml", "bank-a"), ("b.toml", "bank-b")] {
        let name = if bank == "bank-a" { "bank-b" } else { "bank-a" };
        std::fs::write(
            dir.join(cfg),
            config(
                bank,
                name,
                &format!(
                    "accounts = \"{}\"",
                    dir.join(format!("{bank}.csv")).display()
                ),
            ),
        )
        .unwrap();
    }
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();
    let (a, addr_a) = serve(dir, "a.toml");
    let (b, addr_b) = serve(dir, "b.toml");
    let targets = targets(&addr_a, &addr_b);
    let opts = RunOptions::default();
    let run = || run_analysis(analysis, &targets, &tls, &opts);
    for _ in 0..2 {
        run().await.unwrap();
    }
    let idle = [rss(a.0.id()), rss(b.0.id())];
    let mut peak = idle;
    for _ in 0..20 {
        run().await.unwrap();
        peak = [peak[0].max(rss(a.0.id())), peak[1].max(rss(b.0.id()))];
    }
    for r in futures::future::join_all((0..4).map(|_| run())).await {
        r.unwrap();
    }
    // Sessions end at once (the sweep runs every second); give it two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = [rss(a.0.id()), rss(b.0.id())];
    let results = ok(node(
        dir,
        &["results", "--config", "b.toml", "--format", "json"],
    ));
    let results: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 26);
    for r in &results {
        let values: Vec<i64> = r["rows"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["value"].as_i64().unwrap())
            .collect();
        assert_eq!(values, [want.0, want.1, want.2], "{r}");
    }
    // A session's list alone is ≥ 32 bytes per key; 24 kept sessions would
    // hold ≥ 23 MB (about 30 MB by their sizes). Allocator slack after concurrent
    // runs stays below (7–9 MiB measured).
    let slack = 16 << 20;
    for (i, bank) in ["bank-a", "bank-b"].iter().enumerate() {
        eprintln!(
            "{bank}: idle {} MiB, peak during the sequential runs {} MiB, after {} MiB",
            idle[i] >> 20,
            peak[i] >> 20,
            after[i] >> 20
        );
        assert!(
            after[i] <= idle[i] + slack,
            "{bank}: resident memory {} MiB after load, {} MiB idle",
            after[i] >> 20,
            idle[i] >> 20
        );
    }
}
