//! Faults with real `cleanroom-node serve` processes on loopback: a node
//! stopped (SIGSTOP) or killed mid-run, the coordinator vanishing mid-run,
//! a graceful SIGTERM, and the standard health service. Each run must fail
//! with an error naming the node and the phase, release nothing, and leave
//! budget and audit state consistent.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleanroom_coordinator::{
    CoordinatorError, Deadlines, PhaseEdge, PhaseHook, RunOptions, run_analysis,
};
use cleanroom_node::tls::TlsMaterial;
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

/// The coordinator vanishes after setup (its task and connections dropped,
/// as when its process dies): each node's sweep expires the session after
/// its idle TTL, drops its secrets and records the expiry; the sid cannot be
/// resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_coordinator_leaves_sessions_to_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_banks(dir, ANALYSIS);
    for cfg in ["a.toml", "b.toml"] {
        let path = dir.join(cfg);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("session_ttl_secs = 10\n{text}")).unwrap();
    }
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();
    let (_a, addr_a) = serve(dir, "a.toml");
    let (_b, addr_b) = serve(dir, "b.toml");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Mutex::new(Some(tx));
    let hook: PhaseHook = Arc::new(move |phase: &str, edge: PhaseEdge| {
        if phase == "stream"
            && edge == PhaseEdge::Start
            && let Some(tx) = tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    let targets = targets(&addr_a, &addr_b);
    let run = tokio::spawn(async move {
        let opts = RunOptions {
            on_phase: Some(hook),
            ..RunOptions::default()
        };
        let _ = run_analysis(ANALYSIS, &targets, &tls, &opts).await;
    });
    rx.await.unwrap();
    run.abort();
    let _ = run.await;
    // Expired within TTL + a sweep; well under a minute.
    let expired = |cfg: &str| audit(dir, cfg).iter().any(|r| r["event"] == "expire");
    let start = Instant::now();
    while !(expired("a.toml") && expired("b.toml")) {
        assert!(start.elapsed() < Duration::from_secs(60), "not expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        ok(node(dir, &["results", "--config", "b.toml"])).is_empty(),
        "nothing released"
    );
    for cfg in ["a.toml", "b.toml"] {
        assert!(ok(node(dir, &["audit", "verify", "--config", cfg])).contains("intact"));
    }
    // The session cannot be resumed: its sid is spent.
    let records = audit(dir, "a.toml");
    let setup = records.iter().find(|r| r["event"] == "setup").unwrap();
    let sid = hex::decode(setup["sid"].as_str().unwrap()).unwrap();
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr_a}"))
        .unwrap()
        .tls_config(tls.client_config("bank-a"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = NodeClient::new(channel)
        .setup(SetupRequest {
            session: Some(SessionRef {
                sid,
                analysis_hash: cleanroom::Analysis::parse(ANALYSIS)
                    .unwrap()
                    .hash()
                    .0
                    .to_vec(),
            }),
            analysis_toml: ANALYSIS.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
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
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();
    let (mut a, addr_a) = serve(dir, "a.toml");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr_a}"))
        .unwrap()
        .tls_config(tls.client_config("bank-a"))
        .unwrap()
        .connect()
        .await
        .unwrap();
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
