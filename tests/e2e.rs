//! End to end over gRPC: real node servers on ephemeral loopback ports with
//! mutual TLS, a real coordinator, CSV files through DataFusion. Results
//! stored at the recipient's node must equal a plaintext join computed here.

mod common;

use std::sync::Arc;

use cleanroom::session::os_rng;
use cleanroom::{Analysis, SessionId};
use cleanroom_coordinator::{CoordinatorError, RunOptions, run_analysis};
use cleanroom_node::Store;
use cleanroom_node::tls::{TlsMaterial, write_dev_certs};
use cleanroom_proto::v1::{SessionRef, SetupRequest};
use common::*;
use tonic::Code;

async fn check_run(n: usize, recipient: usize, seed: u64) {
    check_run_on(n, recipient, seed, "").await;
}

/// [`check_run`] with `protocol` (a `[protocol]` section, or nothing)
/// appended to the analysis.
async fn check_run_on(n: usize, recipient: usize, seed: u64, protocol: &str) {
    let banks = banks(n, seed);
    let text = analysis_text(n, recipient, 1) + protocol;
    let cluster = Cluster::start(&banks, &[&text]).await;
    let report = cluster
        .run(&text, "coordinator")
        .await
        .expect("run succeeds");
    let want = plaintext(&banks);
    assert!(want["count"] > 10, "fixture should overlap: {want:?}");

    // The recipient's node holds exactly the plaintext join's numbers.
    let stored = Store::at(cluster.state_dir(recipient))
        .unwrap()
        .result(&report.sid)
        .unwrap();
    assert_eq!(released(&stored), want);
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

const KEYED_PRF: &str = "[protocol]\npsi = \"keyed-prf\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_prf_matches_plaintext_join() {
    check_run_on(2, 0, 3, KEYED_PRF).await;
    check_run_on(3, 1, 4, KEYED_PRF).await;
}

/// Over gRPC too, a node refuses the other protocol's messages: a sealed
/// group key in an ecdh-ring session, a re-blind stream in a keyed-prf one,
/// and a keyed-prf local step without its key. Each refusal names the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_refuse_the_other_protocols_messages_over_grpc() {
    use cleanroom_proto::v1::{LocalStepRequest, ReblindChunk};
    let banks = banks(2, 13);
    let ring = analysis_text(2, 1, 1);
    let prf = ring.clone() + KEYED_PRF;
    let cluster = Cluster::start(&banks, &[&ring, &prf]).await;
    let setup = async |text: &str, i: usize| {
        let (session, r) = cluster.open_session(i, text).await;
        (session, r.sealed_group_keys)
    };
    // ecdh-ring: no box at setup; one at the local step is refused.
    let (session, boxes) = setup(&ring, 1).await;
    assert!(boxes.is_empty());
    let err = cluster
        .client(1)
        .await
        .local_step(LocalStepRequest {
            session: Some(session),
            sealed_group_key: vec![7; 48],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ecdh-ring"), "{}", err.message());
    // keyed-prf: the first party sends a box per other party; a local step
    // without one is refused at the second party.
    let (session, boxes) = setup(&prf, 0).await;
    assert_eq!(boxes.iter().map(Vec::len).collect::<Vec<_>>(), [0, 48]);
    let (session_b, _) = setup(&prf, 1).await;
    let err = cluster
        .client(1)
        .await
        .local_step(LocalStepRequest {
            session: Some(session_b.clone()),
            ..LocalStepRequest::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("failed to open"),
        "{}",
        err.message()
    );
    // ...and a re-blind stream is refused.
    let chunk = ReblindChunk {
        session: Some(session),
        owner: 1,
        points: vec![0; 32],
        list_rows: 1,
        length_tag: vec![0; 32],
        chunk_tag: vec![0; 32],
    };
    let mut replies = cluster
        .client(0)
        .await
        .reblind(futures::stream::iter([chunk]))
        .await
        .unwrap()
        .into_inner();
    let err = replies.message().await.unwrap_err();
    assert!(err.message().contains("keyed-prf"), "{}", err.message());
    assert!(cluster.results(0).is_empty() && cluster.results(1).is_empty());
    cluster.stop().await;
}

/// A node parses the coordinator's position bitmap strictly before its
/// session sees it: a bitmap other than one bit a row of the list (an
/// earlier coordinator's varint positions arrive as none at all), or with a
/// bit past the list's end, is refused as an invalid argument naming the
/// cause, and nothing is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_bitmaps_are_parsed_strictly_over_grpc() {
    use cleanroom_proto::v1::MaskSumRequest;
    let banks = banks(2, 14);
    let text = analysis_text(2, 1, 1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    for (list_len, positions, cause) in [
        (
            16u64,
            vec![0xffu8],
            "bitmap of 1 bytes for a list of 16 rows",
        ),
        (16, Vec::new(), "bitmap of 0 bytes for a list of 16 rows"),
        (
            12,
            vec![0, 0x10],
            "position 12 out of range for a list of 12 rows",
        ),
    ] {
        let (session, _) = cluster.open_session(1, &text).await;
        let mut client = cluster.client(1).await;
        let err = client
            .mask_sum(MaskSumRequest {
                session: Some(session),
                owner: 0,
                list_len,
                positions,
                pad: vec![0],
                ..MaskSumRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(cause), "{}", err.message());
    }
    assert!(cluster.results(0).is_empty() && cluster.results(1).is_empty());
    cluster.stop().await;
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

/// An analysis text altered after approval (same announced hash, other
/// text) is refused at setup, naming the hash; nothing is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_analysis_text_is_refused() {
    let banks = banks(2, 12);
    let text = analysis_text(2, 1, 1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    let hash = Analysis::parse(&text).unwrap().hash();
    let altered = text.replace("min_matched = 1", "min_matched = 0");
    assert_ne!(altered, text);
    let err = cluster
        .client(0)
        .await
        .setup(SetupRequest {
            session: Some(SessionRef {
                sid: SessionId::random(&mut os_rng()).as_bytes().to_vec(),
                analysis_hash: hash.0.to_vec(),
            }),
            analysis_toml: altered,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains(&hash.to_hex()), "{}", err.message());
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
            CoordinatorError::Protocol(cleanroom::protocol::ProtocolError::TooFewMatches)
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
    assert_eq!(released(&release), truth);
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
    let stored = Store::at(cluster.state_dir(1))
        .unwrap()
        .result(&r.sid)
        .unwrap();
    assert!(stored.noisy);
    for v in &stored.rows[0].values {
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
    let stored = Store::at(cluster.state_dir(1))
        .unwrap()
        .result(&r.sid)
        .unwrap();
    let amount = stored.rows[0]
        .values
        .iter()
        .find(|v| v.aggregate == "sum(bank-a.amount)")
        .unwrap()
        .value;
    assert_ne!(amount, want["sum(bank-a.amount)"]);
    cluster.stop().await;
}

/// Restarts bank-a with its config changed by `tweak` and a clock the test
/// controls, which it returns.
async fn restart_bank_a_with_clock(
    cluster: &mut Cluster,
    tweak: impl FnOnce(&mut cleanroom_node::NodeConfig),
) -> Arc<cleanroom_node::clock::ManualClock> {
    let clock = Arc::new(cleanroom_node::clock::ManualClock::default());
    let old = cluster.nodes.remove(0);
    old.shutdown().await.unwrap();
    let mut cfg = cluster.configs[0].clone();
    tweak(&mut cfg);
    cluster.nodes.insert(
        0,
        cleanroom_node::spawn_with_clock(cfg, clock.clone())
            .await
            .unwrap(),
    );
    clock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_sessions_expire() {
    use cleanroom_proto::v1::LocalStepRequest;

    let banks = banks(2, 10);
    let text = analysis_text(2, 1, 1);
    let mut cluster = Cluster::start(&banks, &[&text]).await;
    let clock = restart_bank_a_with_clock(&mut cluster, |cfg| cfg.session_ttl_secs = 60).await;

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
    assert_eq!(cluster.nodes[0].service.open_sessions(), 1);
    clock.advance(std::time::Duration::from_secs(61));
    // The node's sweep expires it without any further request (a vanished
    // coordinator sends none).
    let mut waited = 0;
    while cluster.nodes[0].service.open_sessions() > 0 {
        assert!(waited < 100, "the idle session was not swept");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    let err = client
        .local_step(LocalStepRequest {
            session: Some(session),
            ..LocalStepRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("expired"), "{}", err.message());
    let audit = cluster.store(0).audit_chain().unwrap();
    assert!(
        audit.iter().any(|r| r.json.contains("expired unfinished")),
        "the expiry is recorded"
    );
    cluster.stop().await;
}

/// Activity keeps a session alive past its idle TTL, but not past
/// `session_max_secs` from setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_sessions_still_expire_at_their_maximum_age() {
    use cleanroom_proto::v1::{LocalStepRequest, MaskSumRequest};

    let banks = banks(2, 10);
    let text = analysis_text(2, 1, 1);
    let mut cluster = Cluster::start(&banks, &[&text]).await;
    let clock = restart_bank_a_with_clock(&mut cluster, |cfg| {
        cfg.session_ttl_secs = 60;
        cfg.session_max_secs = 100;
    })
    .await;
    let mut client = cluster.client(0).await;
    let session = SessionRef {
        sid: SessionId::random(&mut os_rng()).as_bytes().to_vec(),
        analysis_hash: Analysis::parse(&text).unwrap().hash().0.to_vec(),
    };
    client
        .setup(SetupRequest {
            session: Some(session.clone()),
            analysis_toml: text.clone(),
        })
        .await
        .unwrap();
    // A message every 50 s: never idle for 60 s.
    for _ in 0..2 {
        clock.advance(std::time::Duration::from_secs(50));
        let err = client
            .mask_sum(MaskSumRequest {
                session: Some(session.clone()),
                owner: 99,
                ..MaskSumRequest::default()
            })
            .await
            .unwrap_err();
        if err.code() == Code::NotFound {
            // At 100 s the session has reached its maximum age.
            assert!(err.message().contains("expired"), "{}", err.message());
            let err = client
                .local_step(LocalStepRequest {
                    session: Some(session),
                    ..LocalStepRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::NotFound);
            cluster.stop().await;
            return;
        }
        assert_ne!(err.code(), Code::NotFound, "alive while active");
    }
    panic!("the session outlived session_max_secs");
}

/// Three banks with 100k keys each (half of them common to all): the
/// streamed run equals the plaintext join. Correctness only; the benchmark
/// measures speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_banks_100k_keys_each() {
    const KEYS: u64 = 100_000;
    const COMMON: u64 = 50_000;
    let amount = |k: u64, i: u64| (k * 7919 + i) % 1000 + 1;
    let banks: Vec<Bank> = (0..3).map(|_| Bank { rows: Vec::new() }).collect();
    let text = analysis_text(3, 2, 1);
    let cluster = Cluster::start_with(
        &banks,
        &[&text],
        Setup {
            tweak: Some(Box::new(move |i, c| {
                let path = c.state_dir.with_file_name(format!("big-{i}.csv"));
                let mut s = String::with_capacity(KEYS as usize * 24);
                s.push_str("acct,amount\n");
                for k in 0..KEYS {
                    if k < COMMON {
                        s += &format!("C{k:08},{}\n", amount(k, i as u64));
                    } else {
                        s += &format!("U{i}-{k:08},{}\n", amount(k, i as u64));
                    }
                }
                std::fs::write(&path, s).unwrap();
                c.tables.insert("accounts".into(), path.into());
            })),
            ..Setup::default()
        },
    )
    .await;
    let report = cluster.run(&text, "coordinator").await.unwrap();
    let stored = cluster.store(2).result(&report.sid).unwrap();
    assert_eq!(stored.get("count"), Some(COMMON as i64));
    for i in 0..3u64 {
        let want: u64 = (0..COMMON).map(|k| amount(k, i)).sum();
        assert_eq!(
            stored.get(&format!("sum({}.amount)", party(i as usize))),
            Some(want as i64)
        );
        assert_eq!(
            stored.get(&format!("sum({}.n)", party(i as usize))),
            Some(COMMON as i64)
        );
    }
    cluster.stop().await;
}

/// Load: 20 analyses in a row, then 4 at once, against the same nodes: all
/// equal the plaintext join, and no session outlives its run (nothing
/// leaks: every node's session table is empty afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_in_a_row_and_four_at_once() {
    let banks = banks(2, 9);
    let text = analysis_text(2, 1, 1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    let want = plaintext(&banks);
    let check = |sid: &SessionId| {
        assert_eq!(released(&cluster.store(1).result(sid).unwrap()), want);
    };
    for _ in 0..20 {
        let r = cluster.run(&text, "coordinator").await.unwrap();
        check(&r.sid);
    }
    let runs = futures::future::join_all((0..4).map(|_| cluster.run(&text, "coordinator"))).await;
    for r in runs {
        check(&r.unwrap().sid);
    }
    for node in &cluster.nodes {
        assert_eq!(node.service.open_sessions(), 0, "a session leaked");
    }
    assert_eq!(cluster.results(1).len(), 24);
    cluster.stop().await;
}

/// Bad data at a node: each query output problem is a clear error naming
/// the node and the column, never a panic, never a cell value in what the
/// coordinator receives, and nothing released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_is_a_clear_error_without_cell_values() {
    let banks = banks(2, 11);
    let good = "SELECT acct, sum(amount) AS amount, count(*) AS n FROM accounts GROUP BY acct";
    let cases = [
        // (bank-b's SQL, what the error must name, whether only the data
        // shows it, so that it fails after the debit; a wrong column or
        // type shows in the planned schema and costs no budget)
        (
            "SELECT acct, -sum(amount) AS amount, count(*) AS n FROM accounts GROUP BY acct",
            "\"amount\"",
            true,
        ),
        (
            "SELECT acct, CAST(NULL AS BIGINT) AS amount, count(*) AS n FROM accounts GROUP BY acct",
            "\"amount\"",
            true,
        ),
        (
            "SELECT acct, sum(amount) AS amount, CAST(count(*) AS VARCHAR) AS n FROM accounts GROUP BY acct",
            "\"n\"",
            false,
        ),
        (
            "SELECT CASE WHEN acct < 'M' THEN NULL ELSE acct END AS acct, sum(amount) AS amount, count(*) AS n FROM accounts GROUP BY acct",
            "\"acct\"",
            true,
        ),
        (
            "SELECT CAST(length(acct) AS DOUBLE) AS acct, sum(amount) AS amount, count(*) AS n FROM accounts GROUP BY acct",
            "\"acct\"",
            false,
        ),
        (
            "SELECT acct, sum(amount) AS amount FROM accounts GROUP BY acct",
            "\"n\"",
            false,
        ),
        // A query the engine rejects: the class only, never its text.
        ("SELECT nope FROM accounts", "query engine", false),
    ];
    let texts: Vec<String> = cases
        .iter()
        .map(|(sql, _, _)| {
            let t = analysis_text(2, 1, 1);
            let at = t.rfind(good).unwrap();
            format!("{}{sql}{}", &t[..at], &t[at + good.len()..])
        })
        .collect();
    let approved: Vec<&str> = texts.iter().map(String::as_str).collect();
    let cluster = Cluster::start(&banks, &approved).await;
    let cells: Vec<String> = banks[1]
        .rows
        .iter()
        .map(|r| r.0.trim().to_string())
        .collect();
    let debits = || {
        cluster
            .store(1)
            .audit_chain()
            .unwrap()
            .iter()
            .filter(|r| r.json.contains("\"debit\""))
            .count()
    };
    for ((_, names, costs), text) in cases.iter().zip(&texts) {
        let before = debits();
        let err = cluster.run(text, "coordinator").await.unwrap_err();
        let shown = err.to_string();
        match &err {
            CoordinatorError::Node { node, .. } => assert_eq!(node, "bank-b", "{shown}"),
            e => panic!("unexpected error {e}"),
        }
        assert!(shown.contains(names), "{shown} should name {names}");
        for c in &cells {
            assert!(!shown.contains(c.as_str()), "{shown} quotes a cell");
        }
        assert!(cluster.results(1).is_empty(), "nothing released");
        assert_eq!(debits() - before, usize::from(*costs), "{shown}: debits");
    }
    cluster.stop().await;
}

/// Runs `text` on a fresh two-bank cluster whose `accounts` tables are set
/// by `table` (bank index, CSV path → table source) and returns the stored
/// result as aggregate → value, with bank-a's audit record of the local step.
async fn run_over(
    banks: &[Bank],
    text: &str,
    table: impl Fn(usize, std::path::PathBuf) -> cleanroom_node::config::TableSource + 'static,
) -> (std::collections::BTreeMap<String, i64>, serde_json::Value) {
    let cluster = Cluster::start_with(
        banks,
        &[text],
        Setup {
            tweak: Some(Box::new(move |i, c| {
                let cleanroom_node::config::TableSource::File(csv) = c.tables["accounts"].clone()
                else {
                    unreachable!("the cluster writes CSV files")
                };
                c.tables.insert("accounts".into(), table(i, csv));
            })),
            ..Setup::default()
        },
    )
    .await;
    let report = cluster.run(text, "coordinator").await.unwrap();
    let stored = cluster.store(1).result(&report.sid).unwrap();
    let got = stored.rows[0]
        .values
        .iter()
        .map(|v| (v.aggregate.clone(), v.value))
        .collect();
    let local_step = cluster
        .store(0)
        .audit_chain()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.json).unwrap())
        .find(|r| r["event"] == "local_step")
        .unwrap();
    cluster.stop().await;
    (got, local_step)
}

/// Runs an async data-layer call to completion on a runtime of its own (the
/// cluster's config hook is synchronous and runs inside the test's runtime).
fn block<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || tokio::runtime::Runtime::new().unwrap().block_on(f))
        .join()
        .unwrap()
}

/// The same analysis over CSV, Parquet, Arrow IPC and Delta tables releases
/// the same numbers, equal to the plaintext join; a Delta table read at an
/// older version after an append gives that version's numbers, and the
/// local step's audit record names the version it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_numbers_from_every_source() {
    use cleanroom_node::config::{DeltaAt, TableSource};
    use cleanroom_node::data::{TableFormat, convert_csv};

    let banks = banks(2, 21);
    let text = analysis_text(2, 1, 1);
    let want = plaintext(&banks);
    for format in [
        TableFormat::Csv,
        TableFormat::Parquet,
        TableFormat::Arrow,
        TableFormat::Delta,
    ] {
        let (got, _) = run_over(&banks, &text, move |_, csv| {
            let out = block(async move { convert_csv(&csv, format).await.unwrap() });
            match format {
                TableFormat::Delta => TableSource::Delta {
                    location: out.display().to_string(),
                    at: DeltaAt::Latest,
                },
                _ => TableSource::File(out),
            }
        })
        .await;
        assert_eq!(got, want, "{format:?}");
    }

    // Delta time travel: each bank's table is written (version 0), then
    // bank-a appends rows for accounts both banks hold (version 1).
    let extra: Vec<(String, u64)> = banks[1].rows[..40]
        .iter()
        .map(|(a, _)| (a.clone(), 1_000))
        .collect();
    let mut appended = banks
        .iter()
        .map(|b| Bank {
            rows: b.rows.clone(),
        })
        .collect::<Vec<_>>();
    appended[0].rows.extend(extra.iter().cloned());
    let want_v1 = plaintext(&appended);
    assert_ne!(want_v1, want);
    for (at, expect, version) in [
        (DeltaAt::Version(0), &want, 0),
        (DeltaAt::Latest, &want_v1, 1),
    ] {
        let extra = extra.clone();
        let (got, local_step) = run_over(&banks, &text, move |i, csv| {
            let (extra, at) = (extra.clone(), at.clone());
            block(async move {
                let dir = convert_csv(&csv, TableFormat::Delta).await.unwrap();
                let location = dir.display().to_string();
                if i == 0 {
                    let more = dir.with_extension("extra.csv");
                    let mut s = String::from("acct,amount\n");
                    for (a, v) in &extra {
                        s += &format!("{a},{v}\n");
                    }
                    std::fs::write(&more, s).unwrap();
                    let ctx = datafusion::prelude::SessionContext::new();
                    let batches = ctx
                        .read_csv(more.display().to_string(), Default::default())
                        .await
                        .unwrap()
                        .collect()
                        .await
                        .unwrap();
                    let v = cleanroom_node::delta::write(&location, batches, true)
                        .await
                        .unwrap();
                    assert_eq!(v, 1);
                }
                TableSource::Delta { location, at }
            })
        })
        .await;
        assert_eq!(&got, expect, "delta read at version {version}");
        assert_eq!(
            local_step["table_versions"]["accounts"], version,
            "{local_step}"
        );
    }
}
