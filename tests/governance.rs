//! Governance over gRPC: node policy, the privacy-budget ledger, approvals
//! (revocation, expiry), sessions bound to their coordinator, the
//! metadata-only catalog, grouped results, abort classes, and a transcript
//! of everything each party receives in a three-bank DP run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use cleanroom::keys::{KeyPart, encode_key};
use cleanroom::session::os_rng;
use cleanroom::{Analysis, Psi, SessionId};
use cleanroom_coordinator::CoordinatorError;
use cleanroom_coordinator::catalog::fetch_catalogs;
use cleanroom_node::audit;
use cleanroom_node::policy::Policy;
use cleanroom_node::wiretap::{WireTap, grpc_messages};
use cleanroom_proto::v1::*;
use common::*;
use prost::Message;
use tonic::Code;

fn dp_text(n: usize, recipient: usize, epsilon: f64) -> String {
    let mut bounds = String::from("[privacy.bounds]\n");
    for i in 0..n {
        bounds += &format!(
            "\"{p}.amount\" = 1000000000\n\"{p}.n\" = 100\n",
            p = party(i)
        );
    }
    analysis_text(n, recipient, 1).replace(
        "min_matched = 1\n",
        &format!("min_matched = 1\nepsilon = {epsilon}\n{bounds}"),
    )
}

fn setup_error(err: CoordinatorError) -> (Code, String) {
    match err {
        CoordinatorError::Node {
            call: "setup",
            code,
            message,
            ..
        } => (code, message),
        e => panic!("expected a setup refusal, got {e}"),
    }
}

/// A cluster setup in which node `i` has the policy `policy(i)` for the
/// identity "coordinator" (the default policy where it returns `None`).
fn with_policies(policy: impl Fn(usize) -> Option<Policy> + 'static) -> Setup {
    Setup {
        tweak: Some(Box::new(move |i, c| {
            if let Some(p) = policy(i) {
                c.policy.insert("coordinator".into(), p);
            }
        })),
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_exhaustion_is_refused_before_any_data_is_read() {
    let _serial = serial().await;
    let banks = banks(2, 21);
    // Five released numbers at ε = 0.5: each run costs 2.5.
    let text = dp_text(2, 1, 0.5);
    let cost = Analysis::parse(&text).unwrap().privacy_cost().unwrap();
    assert_eq!(cost.epsilon_micro, 2_500_000);
    let cluster = Cluster::start_with(
        &banks,
        &[&text],
        with_policies(|_| {
            Some(Policy {
                epsilon_budget: Some(4.0),
                ..Policy::default()
            })
        }),
    )
    .await;
    cluster
        .run(&text, "coordinator")
        .await
        .expect("first run fits");
    let spent: Vec<_> = (0..2)
        .map(|i| cluster.store(i).spent("coordinator").unwrap())
        .collect();
    assert!(spent.iter().all(|s| s.epsilon_micro == 2_500_000));
    // The data is gone: a node that read it now would fail on the engine.
    for c in &cluster.configs {
        match &c.tables["accounts"] {
            cleanroom_node::config::TableSource::File(p) => std::fs::remove_file(p).unwrap(),
            other => panic!("not a file: {other:?}"),
        }
    }
    let (code, message) = setup_error(cluster.run(&text, "coordinator").await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("budget"), "{message}");
    for (i, before) in spent.iter().enumerate() {
        assert_eq!(&cluster.store(i).spent("coordinator").unwrap(), before);
        let chain = cluster.store(i).audit_chain().unwrap();
        audit::verify(&chain).unwrap();
        assert!(chain.last().unwrap().json.contains("budget exhausted"));
    }
    assert_eq!(cluster.results(1).len(), 1, "nothing more was released");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_floors_and_required_dp_are_enforced() {
    let _serial = serial().await;
    let banks = banks(2, 22);
    let exact = analysis_text(2, 1, 1);
    let dp = dp_text(2, 1, 1.0);
    let cluster = Cluster::start_with(
        &banks,
        &[&exact, &dp],
        with_policies(|i| {
            Some(if i == 0 {
                Policy {
                    require_dp: true,
                    ..Policy::default()
                }
            } else {
                Policy {
                    min_matched_floor: 5,
                    ..Policy::default()
                }
            })
        }),
    )
    .await;
    let (code, message) = setup_error(cluster.run(&exact, "coordinator").await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("differential privacy"), "{message}");
    let (_, message) = setup_error(cluster.run(&dp, "coordinator").await.unwrap_err());
    assert!(message.contains("at least 5"), "{message}");
    assert!(cluster.results(1).is_empty());
    cluster.stop().await;
}

/// A bank whose policy allows only the ECDH ring refuses a keyed-prf
/// analysis at setup, naming the protocol and the rule; its audit log
/// records the refusal by class and no debit or local step for that
/// analysis; the same node still runs ecdh-ring analyses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_policy_can_refuse_keyed_prf() {
    let _serial = serial().await;
    let banks = banks(2, 29);
    let ring = analysis_text(2, 1, 1);
    let prf = format!("{ring}[protocol]\npsi = \"keyed-prf\"\n");
    let prf_analysis = Analysis::parse(&prf).unwrap();
    assert_eq!(prf_analysis.psi, Psi::KeyedPrf);
    let cluster = Cluster::start_with(
        &banks,
        &[&ring, &prf],
        with_policies(|i| {
            (i == 1).then(|| Policy {
                allowed_psi: Some(vec![Psi::EcdhRing]),
                ..Policy::default()
            })
        }),
    )
    .await;
    let (code, message) = setup_error(cluster.run(&prf, "coordinator").await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    assert!(
        message.contains("psi = \"keyed-prf\"") && message.contains("allows only ecdh-ring"),
        "{message}"
    );
    assert!(cluster.results(1).is_empty(), "nothing released");
    let chain = cluster.store(1).audit_chain().unwrap();
    audit::verify(&chain).unwrap();
    let last: serde_json::Value = serde_json::from_str(&chain.last().unwrap().json).unwrap();
    assert_eq!(last["event"], "refused");
    assert_eq!(last["outcome"], "policy: matching protocol not allowed");
    let prf_hash = prf_analysis.hash().to_hex();
    let steps: Vec<serde_json::Value> = chain
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.json).unwrap())
        .filter(|r| r["analysis_hash"] == prf_hash.as_str())
        .filter(|r| r["event"] == "debit" || r["event"] == "local_step")
        .collect();
    assert!(steps.is_empty(), "no debit or local step: {steps:?}");
    cluster
        .run(&ring, "coordinator")
        .await
        .expect("ecdh-ring is allowed");
    assert_eq!(cluster.results(1).len(), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_analyses_are_refused() {
    let _serial = serial().await;
    let banks = banks(2, 23);
    let text = analysis_text(2, 1, 1);
    let expired = text.replace("name = \"e2e\"", "name = \"e2e\"\nexpires = \"2026-01-01\"");
    let later = text.replace("name = \"e2e\"", "name = \"e2e\"\nexpires = \"2999-01-01\"");
    let cluster = Cluster::start(&banks, &[&text, &expired, &later]).await;
    let hash = Analysis::parse(&text).unwrap().hash();
    cluster.store(0).revoke(&hash).unwrap();
    let (code, message) = setup_error(cluster.run(&text, "coordinator").await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    assert!(
        message.contains("revoked") && message.contains(&hash.to_hex()),
        "{message}"
    );
    let (_, message) = setup_error(cluster.run(&expired, "coordinator").await.unwrap_err());
    assert!(message.contains("expired on 2026-01-01"), "{message}");
    assert!(cluster.results(1).is_empty());
    cluster
        .run(&later, "coordinator")
        .await
        .expect("not yet expired");
    // Approving again lifts a revocation.
    cluster.store(0).approve(&text, "bank-a").unwrap();
    cluster
        .run(&text, "coordinator")
        .await
        .expect("approved again");
    let listed = cluster.store(0).approvals().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|a| a.revoked_at.is_none()));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_bound_to_the_identity_that_set_it_up() {
    let _serial = serial().await;
    let banks = banks(2, 24);
    let text = analysis_text(2, 1, 1);
    let cluster = Cluster::start_with(
        &banks,
        &[&text],
        Setup {
            tweak: Some(Box::new(|_, c| {
                c.authorized_coordinators.push("coordinator-2".into());
            })),
            ..Setup::default()
        },
    )
    .await;
    let session = SessionRef {
        sid: SessionId::random(&mut os_rng()).as_bytes().to_vec(),
        analysis_hash: Analysis::parse(&text).unwrap().hash().0.to_vec(),
    };
    cluster
        .client(0)
        .await
        .setup(SetupRequest {
            session: Some(session.clone()),
            analysis_toml: text.clone(),
        })
        .await
        .unwrap();
    let mut other = cluster.client_as(0, "coordinator-2").await;
    let err = other
        .local_step(LocalStepRequest {
            session: Some(session.clone()),
            ..LocalStepRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = other
        .finish(FinishRequest {
            session: Some(session.clone()),
            aborted: true,
            reason: AbortReason::Coordinator as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The identity that set it up still can.
    cluster
        .client(0)
        .await
        .local_step(LocalStepRequest {
            session: Some(session),
            ..LocalStepRequest::default()
        })
        .await
        .unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_is_metadata_only_and_follows_policy() {
    let _serial = serial().await;
    let banks = banks(2, 25);
    let cluster = Cluster::start_with(
        &banks,
        &[],
        Setup {
            tweak: Some(Box::new(|_, c| {
                let secret = c.state_dir.with_file_name(format!("{}-secret.csv", c.name));
                std::fs::write(&secret, "acct,flag\nACC-9999,1\n").unwrap();
                c.tables.insert("secret".into(), secret.into());
                c.authorized_coordinators.push("coordinator-2".into());
                c.policy.insert(
                    "coordinator".into(),
                    Policy {
                        catalog_tables: Some(vec!["accounts".into()]),
                        ..Policy::default()
                    },
                );
            })),
            ..Setup::default()
        },
    )
    .await;
    let cats = fetch_catalogs(&cluster.targets(), &cluster.tls("coordinator"))
        .await
        .unwrap();
    for c in &cats {
        let names: Vec<&str> = c.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["accounts"]);
    }
    let all = fetch_catalogs(&cluster.targets(), &cluster.tls("coordinator-2"))
        .await
        .unwrap();
    assert_eq!(all[0].tables.len(), 2);
    let text = cleanroom_coordinator::catalog::format_catalogs(&all);
    assert!(
        text.contains("acct") && text.contains("about 400 rows"),
        "{text}"
    );
    for b in &banks {
        for (acct, amount) in &b.rows {
            assert!(!text.contains(acct.trim()) && !has_number(&text, *amount as i64));
        }
    }
    assert!(!text.contains("ACC-9999"));
    cluster.stop().await;
}

fn grouped_text(min_matched: u64) -> String {
    "name = \"grouped\"\nrecipient = \"bank-b\"\n\
     [parties.bank-a]\nsql = \"SELECT acct, sum(amount) AS amount, CASE WHEN sum(amount) < 60000000 THEN 'lo' ELSE 'hi' END AS band FROM accounts GROUP BY acct\"\n\
     [parties.bank-b]\nsql = \"SELECT acct, count(*) AS n FROM accounts GROUP BY acct\"\n\
     [output]\naggregates = [\"count\", \"sum(bank-a.amount)\", \"sum(bank-b.n)\"]\n\
     group_by = \"bank-a.band\"\ngroups = [\"lo\", \"hi\", \"none\"]\n"
        .to_string()
        + &format!("[privacy]\nmin_matched = {min_matched}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_results_equal_a_plaintext_group_by() {
    let _serial = serial().await;
    let banks = banks(2, 26);
    let text = grouped_text(1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    let report = cluster.run(&text, "coordinator").await.unwrap();
    let stored = cluster.store(1).result(&report.sid).unwrap();
    // Plaintext GROUP BY over the join.
    let group = |b: &Bank| {
        let mut g: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (a, v) in &b.rows {
            let e = g.entry(a.trim().to_string()).or_default();
            e.0 += v;
            e.1 += 1;
        }
        g
    };
    let (ga, gb) = (group(&banks[0]), group(&banks[1]));
    let mut want: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for (k, (amount, _)) in &ga {
        if let Some((_, n)) = gb.get(k) {
            let band = if *amount < 60_000_000 { "lo" } else { "hi" };
            let e = want.entry(band).or_default();
            e.0 += 1;
            e.1 += *amount as i64;
            e.2 += *n as i64;
        }
    }
    assert!(want["lo"].0 > 5 && want["hi"].0 > 5, "{want:?}");
    for band in ["lo", "hi"] {
        let row = stored.group(band).unwrap();
        assert_eq!(row.get("count"), Some(want[band].0));
        assert_eq!(row.get("sum(bank-a.amount)"), Some(want[band].1));
        assert_eq!(row.get("sum(bank-b.n)"), Some(want[band].2));
    }
    // The declared group nobody falls in is below min_matched: suppressed.
    assert!(stored.group("none").unwrap().suppressed);
    let table = cleanroom_node::cli::format_results(&[stored], cleanroom_node::cli::Format::Table);
    assert!(table.contains("(suppressed"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("  lo ")).count(),
        1,
        "{table}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_matched_no_node_logs_or_stores_the_count() {
    let _serial = serial().await;
    let mark = log_mark();
    let banks = banks(2, 27);
    let m = plaintext(&banks)["count"];
    assert!(m > 60, "a count unlike any clock field: {m}");
    let text = analysis_text(2, 1, m as u64 + 1);
    let cluster = Cluster::start(&banks, &[&text]).await;
    let err = cluster.run(&text, "coordinator").await.unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::Protocol(cleanroom::protocol::ProtocolError::TooFewMatches)
        ),
        "{err}"
    );
    assert!(!has_number(&err.to_string(), m), "{err}");
    let log = log_since(mark);
    assert!(!has_number(&log, m), "a log line holds the count");
    for i in 0..2 {
        let state = state_text(cluster.state_dir(i));
        assert!(!has_number(&state, m), "node {i} stored the count");
        // The nodes learnt only the class of the abort.
        assert!(state.contains("ABORT_REASON_RELEASE_REFUSED"), "{state}");
    }
    assert!(cluster.results(1).is_empty());
    cluster.stop().await;
}

// ------------------------------------------------------------ transcript test

/// Every call body that crossed one node's server.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, bool, Vec<u8>)>>);

impl WireTap for Recorder {
    fn record(&self, path: &str, inbound: bool, bytes: Vec<u8>) {
        self.0
            .lock()
            .unwrap()
            .push((path.to_string(), inbound, bytes));
    }
}

/// What a party received, reduced to what can carry data: byte strings and
/// text (searched for keys and encoded numbers) and value-carrying numbers
/// (masked values, pads, sums, counts). Structural values (list lengths,
/// the position bitmaps, ring indices) are left out: they are the documented
/// leakage.
#[derive(Default, Debug)]
struct Received {
    bytes: Vec<Vec<u8>>,
    numbers: Vec<u64>,
    messages: usize,
    /// keyed-prf: the sealed group keys in Setup answers (also in `bytes`).
    group_key_boxes: Vec<Vec<u8>>,
    /// The list elements (points or tags) of LocalStep answers (also in
    /// `bytes`).
    list_elements: Vec<u8>,
}

impl Received {
    fn add(&mut self, path: &str, inbound: bool, body: &[u8]) {
        let method = path.rsplit('/').next().unwrap_or("");
        for m in grpc_messages(body) {
            self.messages += 1;
            match (method, inbound) {
                ("Setup", true) => {
                    // The approved analysis: public to every party.
                    SetupRequest::decode(m).unwrap();
                }
                ("Setup", false) => {
                    let r = SetupResponse::decode(m).unwrap();
                    self.bytes.push(r.party.into());
                    self.bytes.extend(r.sealed_group_keys.iter().cloned());
                    self.group_key_boxes.extend(r.sealed_group_keys);
                }
                ("LocalStep", true) => {
                    let r = LocalStepRequest::decode(m).unwrap();
                    self.bytes.push(r.sealed_group_key);
                }
                ("LocalStep", false) => {
                    let c = ListChunk::decode(m).unwrap();
                    self.list_elements.extend_from_slice(&c.points);
                    self.bytes.push(c.points);
                    self.bytes.extend(c.length_tags);
                    self.bytes.push(c.chunk_tag);
                    self.numbers.extend(c.masked);
                }
                ("Reblind", true) => self.bytes.push(ReblindChunk::decode(m).unwrap().points),
                ("Reblind", false) => self.bytes.push(PointChunk::decode(m).unwrap().points),
                ("MaskSum", true) => {
                    let r = MaskSumRequest::decode(m).unwrap();
                    self.bytes.push(r.length_tag);
                    self.numbers.extend(r.pad);
                }
                ("MaskSum", false) => self.bytes.push(MaskSumResponse::decode(m).unwrap().sealed),
                ("Deliver", true) => {
                    // The count is the release itself (noisy), for the
                    // recipient only; the sums are padded.
                    let d = DeliverRequest::decode(m).unwrap();
                    for s in d.sums {
                        self.numbers.extend(s.masked_sum);
                        self.bytes.push(s.sealed_mask_sum);
                    }
                }
                ("Deliver", false) => self
                    .bytes
                    .push(DeliverResponse::decode(m).unwrap().stored_as.into()),
                ("Finish", true) => {
                    // Only a flag and a class: the message has no free text.
                    FinishRequest::decode(m).unwrap();
                }
                ("Finish", false) => {
                    FinishResponse::decode(m).unwrap();
                }
                (other, _) => panic!("unexpected call {other}"),
            }
        }
    }

    /// Asserts that nothing received holds a secret.
    fn assert_holds_none(&self, who: &str, keys: &[Vec<u8>], values: &BTreeSet<u64>) {
        for b in &self.bytes {
            for k in keys {
                assert!(
                    !b.windows(k.len()).any(|w| w == k.as_slice()),
                    "{who} received a raw key"
                );
            }
            for v in values {
                for enc in [v.to_be_bytes(), v.to_le_bytes()] {
                    assert!(
                        !b.windows(8).any(|w| w == enc),
                        "{who} received the value {v} in bytes"
                    );
                }
            }
            let text = String::from_utf8_lossy(b);
            for v in values.iter().filter(|&&v| searchable_as_text(v)) {
                assert!(!has_number(&text, *v as i64), "{who} received {v} as text");
            }
        }
        for n in &self.numbers {
            assert!(!values.contains(n), "{who} received the value {n}");
        }
    }
}

/// Whether a secret value is distinctive enough to search for as decimal
/// text. Values are kept as u64 but a released (noisy) value may be negative
/// (stored as its two's complement): it is searched for as the signed number
/// it is, and only when it has at least three digits, so that `-2` is not
/// found in a party name like `bank-2`.
fn searchable_as_text(v: u64) -> bool {
    (v as i64).unsigned_abs() >= 100
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_of_a_three_bank_dp_run_holds_no_secret_outside_the_recipient() {
    transcript_holds_no_secret_outside_the_recipient(false).await;
}

/// The same under keyed-prf, and: the group key the banks used (recovered
/// here from the box that crossed the wire, with the banks' identity keys)
/// is nowhere in what the coordinator received, though every list it
/// received was tagged under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_of_a_keyed_prf_run_holds_no_secret_and_never_the_group_key() {
    transcript_holds_no_secret_outside_the_recipient(true).await;
}

async fn transcript_holds_no_secret_outside_the_recipient(prf: bool) {
    let _serial = serial().await;
    let mark = log_mark();
    let n = 3;
    let recipient = 2;
    let banks = banks(n, 28);
    let mut text = dp_text(n, recipient, 1.0);
    if prf {
        text += "[protocol]\npsi = \"keyed-prf\"\n";
    }
    let recorders: Vec<Arc<Recorder>> = (0..n).map(|_| Arc::new(Recorder::default())).collect();
    let cluster = Cluster::start_with(
        &banks,
        &[&text],
        Setup {
            taps: recorders
                .iter()
                .map(|r| r.clone() as Arc<dyn WireTap>)
                .collect(),
            ..Setup::default()
        },
    )
    .await;
    let report = cluster.run(&text, "coordinator").await.unwrap();
    let stored = cluster.store(recipient).result(&report.sid).unwrap();
    let identities: Vec<_> = cluster
        .configs
        .iter()
        .map(|c| c.identity().unwrap())
        .collect();
    cluster.stop().await;

    // The secrets: raw keys (as text and canonically encoded), every feature
    // value of every bank (per row and per key), the noise-free aggregates
    // and the released (noisy) ones.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut values: BTreeSet<u64> = BTreeSet::new();
    for b in &banks {
        let mut per_key: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (acct, amount) in &b.rows {
            keys.push(acct.trim().as_bytes().to_vec());
            keys.push(encode_key(&[KeyPart::Str(acct)]));
            values.insert(*amount);
            let e = per_key.entry(acct.trim().to_string()).or_default();
            e.0 += amount;
            e.1 += 1;
        }
        for (amount, count) in per_key.values() {
            values.insert(*amount);
            if *count >= 2 {
                values.insert(*count);
            }
        }
    }
    let truth = plaintext(&banks);
    values.extend(truth.values().map(|v| *v as u64));
    values.extend(stored.rows[0].values.iter().map(|v| v.value as u64));
    values.remove(&0);

    let mut coordinator = Received::default();
    let mut banks_received: Vec<Received> = (0..n).map(|_| Received::default()).collect();
    for (i, r) in recorders.iter().enumerate() {
        for (path, inbound, body) in r.0.lock().unwrap().iter() {
            if *inbound {
                banks_received[i].add(path, true, body);
            } else {
                coordinator.add(path, false, body);
            }
        }
    }
    assert!(coordinator.messages > 10 && coordinator.numbers.len() > 500);
    if prf {
        let group_key = open_group_key(&coordinator, &identities, &report, &text);
        // Every list the coordinator received was tagged under that key...
        let tagger = group_key.tagger(&report.sid);
        let tags: BTreeSet<&[u8]> = coordinator.list_elements.chunks(16).collect();
        let tagged = banks
            .iter()
            .flat_map(|b| &b.rows)
            .filter(|(acct, _)| {
                tags.contains(tagger.tag(&encode_key(&[KeyPart::Str(acct)])).as_slice())
            })
            .count();
        assert_eq!(tagged, banks.iter().map(|b| b.rows.len()).sum::<usize>());
        // ...yet neither the key nor any 8 bytes of it reached it.
        let k = group_key.as_bytes();
        for b in &coordinator.bytes {
            for part in k.chunks(8) {
                assert!(
                    !b.windows(8).any(|w| w == part),
                    "the coordinator received part of the group key"
                );
            }
        }
        for part in k.chunks(8) {
            let word = u64::from_be_bytes(part.try_into().unwrap());
            let le = u64::from_le_bytes(part.try_into().unwrap());
            assert!(!coordinator.numbers.contains(&word) && !coordinator.numbers.contains(&le));
        }
    } else {
        assert!(coordinator.group_key_boxes.is_empty());
    }
    coordinator.assert_holds_none("the coordinator", &keys, &values);
    for (i, r) in banks_received.iter().enumerate() {
        assert!(r.messages > 3, "bank {i} took part");
        if i != recipient {
            r.assert_holds_none(&party(i), &keys, &values);
        }
    }
    // The recipient received padded sums only: none of them is a released
    // or noise-free value either; it learns them by unmasking.
    banks_received[recipient].assert_holds_none("the recipient (before unmasking)", &keys, &values);

    // List lengths (`rows=N`) are logged and public to every party that
    // handles the list; they are not feature values even when equal to one.
    let log = without_list_sizes(&log_since(mark));
    assert!(log.contains("session opened"), "the log was captured");
    for k in keys.iter().filter(|k| k.is_ascii()) {
        assert!(
            !log.contains(std::str::from_utf8(k).unwrap()),
            "a log holds a key"
        );
    }
    for v in values.iter().filter(|&&v| searchable_as_text(v)) {
        let lines: Vec<&str> = log.lines().filter(|l| has_number(l, *v as i64)).collect();
        assert!(lines.is_empty(), "a log holds the value {v}: {lines:#?}");
    }
}

/// The group key of a keyed-prf run, opened from the boxes the first party
/// sent in its Setup answer with the receivers' identity keys (which the
/// coordinator does not have). Every box opens to the same key.
fn open_group_key(
    coordinator: &Received,
    identities: &[cleanroom::share::IdentityKey],
    report: &cleanroom_coordinator::RunReport,
    text: &str,
) -> cleanroom::prf::GroupKey {
    use cleanroom::prf::GroupKey;
    use cleanroom::share::PairwiseSecret;
    let hash = Analysis::parse(text).unwrap().hash();
    let boxes = &coordinator.group_key_boxes;
    assert_eq!(boxes.len(), identities.len(), "one box per party");
    assert!(boxes[0].is_empty());
    let keys: Vec<GroupKey> = (1..identities.len())
        .map(|j| {
            let wrap = PairwiseSecret::derive(&identities[j], &identities[0].public(), &report.sid)
                .unwrap()
                .group_key_wrap(&hash.0, &party(0), &party(j));
            GroupKey::open(&wrap, &boxes[j], &report.sid, &hash.0).unwrap()
        })
        .collect();
    assert!(keys.iter().all(|k| k.as_bytes() == keys[0].as_bytes()));
    keys[0].clone()
}

/// The log with the numbers of its `rows=N` fields removed.
fn without_list_sizes(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(i) = rest.find("rows=") {
        out.push_str(&rest[..i + 5]);
        rest = rest[i + 5..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}
