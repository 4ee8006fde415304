//! Pins the `cleanroom-node` command line with real `serve` processes on
//! loopback: a run step by step, governance commands, crash consistency,
//! migration, and error behaviour.

mod common;

use cleanroom_coordinator::{RunOptions, run_analysis};
use cleanroom_node::tls::TlsMaterial;
use common::*;
/// Every step of a run by hand, with the output of each command checked
/// (the README's walk-through itself is run by coordinator/tests/readme.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_flow_step_by_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("mule.toml"), ANALYSIS).unwrap();
    write_configs(dir);

    assert!(
        ok(node(
            dir,
            &[
                "certs",
                "--out",
                "certs",
                "--names",
                "bank-a,bank-b,coordinator"
            ]
        ))
        .contains("ca.pem")
    );
    let pk = ok(node(dir, &["keygen", "--out", "keys/bank-a.key"]));
    assert_eq!(pk.trim().len(), 64);
    assert_eq!(
        std::fs::read_to_string(dir.join("keys/bank-a.pub")).unwrap(),
        pk.trim()
    );
    assert!(
        err(node(dir, &["keygen", "--out", "keys/bank-a.key"])).contains("refusing to overwrite")
    );
    ok(node(dir, &["keygen", "--out", "keys/bank-b.key"]));
    let hash = cleanroom::Analysis::parse(ANALYSIS)
        .unwrap()
        .hash()
        .to_hex();
    assert_eq!(
        ok(node(dir, &["approve", "--config", "a.toml", "mule.toml"])).trim(),
        format!("approved {hash}")
    );
    ok(node(dir, &["approve", "--config", "b.toml", "mule.toml"]));

    let (_a, addr_a) = serve(dir, "a.toml");
    let (_b, addr_b) = serve(dir, "b.toml");
    let targets = targets(&addr_a, &addr_b);
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();
    let report = run_analysis(ANALYSIS, &targets, &tls, &RunOptions::default())
        .await
        .unwrap();

    let table = ok(node(dir, &["results", "--config", "b.toml"]));
    assert!(
        table.contains(&report.sid.to_hex()) && table.contains("sum(bank-a.amount_cents)"),
        "{table}"
    );
    let json = ok(node(
        dir,
        &[
            "results",
            "--config",
            "b.toml",
            &report.sid.to_hex(),
            "--format",
            "json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["sid"], report.sid.to_hex());
    assert_eq!(v["rows"][0]["values"][0]["aggregate"], "count");
    assert!(v["rows"][0]["values"][0]["value"].as_i64().unwrap() >= 10);
    // Bank A is not the recipient: it holds nothing.
    assert_eq!(ok(node(dir, &["results", "--config", "a.toml"])), "");
    assert!(
        err(node(
            dir,
            &["results", "--config", "b.toml", &"0".repeat(64)]
        ))
        .contains("no stored result")
    );
}

#[test]
fn errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certs_and_keys(dir);
    std::fs::write(dir.join("c.toml"), config("bank-c", "bank-a", "")).unwrap();
    ok(node(dir, &["keygen", "--out", "keys/bank-c.key"]));
    std::fs::write(dir.join("mule.toml"), ANALYSIS).unwrap();
    // bank-c is not a party of the analysis.
    assert!(
        err(node(dir, &["approve", "--config", "c.toml", "mule.toml"])).contains("not a party")
    );
    // A malformed analysis names the problem.
    std::fs::write(
        dir.join("bad.toml"),
        ANALYSIS.replace("\"count\",", "\"median(x)\","),
    )
    .unwrap();
    assert!(err(node(dir, &["approve", "--config", "c.toml", "bad.toml"])).contains("median(x)"));
    // A config with an unknown field is refused.
    std::fs::write(
        dir.join("x.toml"),
        "colour = 1\n".to_string() + &config("bank-a", "bank-b", ""),
    )
    .unwrap();
    assert!(err(node(dir, &["results", "--config", "x.toml"])).contains("colour"));
    // A table whose file is missing: `serve` refuses to start, naming it.
    std::fs::write(
        dir.join("m.toml"),
        config("bank-a", "bank-b", "transfers = \"data/missing.csv\""),
    )
    .unwrap();
    let e = err(node(dir, &["serve", "--config", "m.toml"]));
    assert!(e.contains("transfers") || e.contains("missing.csv"), "{e}");
    // A CSV with a malformed row: `check` shows the engine's error to the
    // operator (the only place it is shown), no panic.
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("data/t.csv"),
        "transfer_id,from_account,to_bank,to_account,amount_cents,ts\n\
         1,A-1,BANKB,B-1,250000,1767284189\n2,A-2,BANKB,B-2,not-a-number,1767269837\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("t.toml"),
        config("bank-a", "bank-b", "transfers = \"data/t.csv\""),
    )
    .unwrap();
    let e = err(node(dir, &["check", "--config", "t.toml", "mule.toml"]));
    assert!(!e.contains("panicked"), "{e}");
    assert!(
        err(node(
            dir,
            &["certs", "--out", "c2", "--names", "not a name"]
        ))
        .contains("not a valid DNS name")
    );
}

/// The node process dies right after its budget debit commits, before it
/// replies. After a restart the debit is there (never a release without a
/// debit), the audit chain verifies, the session cannot be resumed, and the
/// next run debits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_debit_leaves_a_consistent_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = dp_analysis();
    two_banks(dir, &text);
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();

    let (mut a, addr_a) = serve_env(
        dir,
        "a.toml",
        &[("CLEANROOM_NODE_FAILPOINT", "after-debit")],
    );
    let (_b, addr_b) = serve(dir, "b.toml");
    let err = run_analysis(
        &text,
        &targets(&addr_a, &addr_b),
        &tls,
        &RunOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("bank-a"), "{err}");
    let status = a.0.wait().unwrap();
    assert!(!status.success(), "the failpoint killed bank-a");
    assert!(
        ok(node(dir, &["results", "--config", "b.toml"])).is_empty(),
        "nothing released"
    );

    // Restarted: the debit survived and the log is intact.
    let (_a, addr_a) = serve(dir, "a.toml");
    let budget = ok(node(dir, &["budget", "--config", "a.toml"]));
    assert!(
        budget.contains("coordinator") && budget.contains("4.000000"),
        "{budget}"
    );
    assert!(ok(node(dir, &["audit", "verify", "--config", "a.toml"])).contains("intact"));
    assert!(ok(node(dir, &["audit", "verify", "--config", "b.toml"])).contains("intact"));
    let export = ok(node(dir, &["audit", "export", "--config", "a.toml"]));
    let records: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let debit = records.iter().find(|r| r["event"] == "debit").unwrap();
    assert_eq!(debit["epsilon"], 4.0);
    let sid = debit["sid"].as_str().unwrap().to_string();

    // The crashed session cannot be resumed: its sid is spent.
    assert_eq!(
        setup_again(dir, &addr_a, "bank-a", hex::decode(&sid).unwrap(), &text).await,
        tonic::Code::AlreadyExists
    );

    // A new run completes and debits once more.
    run_analysis(
        &text,
        &targets(&addr_a, &addr_b),
        &tls,
        &RunOptions::default(),
    )
    .await
    .unwrap();
    let budget = ok(node(dir, &["budget", "--config", "a.toml"]));
    assert!(budget.contains("8.000000"), "{budget}");
    assert!(ok(node(dir, &["audit", "verify", "--config", "a.toml"])).contains("intact"));
}

/// Approvals, revocation, budget and the audit log through the CLI; a
/// tampered audit log is detected with the record named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_commands_and_tamper_detection() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = dp_analysis();
    two_banks(dir, &text);
    let hash = cleanroom::Analysis::parse(&text).unwrap().hash().to_hex();
    let listed = ok(node(dir, &["approvals", "--config", "a.toml"]));
    for want in [
        hash.as_str(),
        "mule-cashout",
        "parties    bank-a, bank-b",
        "recipient  bank-b",
        "matching   ecdh-ring",
        "FROM transfers",
    ] {
        assert!(listed.contains(want), "{want} in {listed}");
    }
    let json = ok(node(
        dir,
        &["approvals", "--config", "a.toml", "--format", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["hash"], hash);
    assert_eq!(v["psi"], "ecdh-ring");
    assert!(v["sql"]["bank-b"].as_str().unwrap().contains("withdrawals"));

    let (_a, addr_a) = serve(dir, "a.toml");
    let (_b, addr_b) = serve(dir, "b.toml");
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();
    run_analysis(
        &text,
        &targets(&addr_a, &addr_b),
        &tls,
        &RunOptions::default(),
    )
    .await
    .unwrap();
    let results = ok(node(dir, &["results", "--config", "b.toml"]));
    assert!(results.contains("differentially private"), "{results}");

    // Revoked: refused at setup, naming the hash.
    assert_eq!(
        ok(node(dir, &["revoke", "--config", "a.toml", &hash])).trim(),
        format!("revoked {hash}")
    );
    assert!(ok(node(dir, &["approvals", "--config", "a.toml"])).contains("REVOKED"));
    let refused = run_analysis(
        &text,
        &targets(&addr_a, &addr_b),
        &tls,
        &RunOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("revoked"), "{refused}");
    assert!(
        err(node(
            dir,
            &["revoke", "--config", "a.toml", &"ab".repeat(32)]
        ))
        .contains("not approved")
    );

    // The chain verifies; its head can be kept and checked later.
    let verified = ok(node(dir, &["audit", "verify", "--config", "a.toml"]));
    let head = verified
        .lines()
        .find_map(|l| l.strip_prefix("head "))
        .unwrap()
        .to_string();
    ok(node(
        dir,
        &["audit", "verify", "--config", "a.toml", "--head", &head],
    ));
    let export = ok(node(dir, &["audit", "export", "--config", "a.toml"]));
    let events: Vec<String> = export
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
        .collect();
    for e in [
        "approve",
        "setup",
        "debit",
        "local_step",
        "reblind",
        "finish",
        "revoke",
        "refused",
    ] {
        assert!(events.contains(&format!("\"{e}\"")), "{e} in {events:?}");
    }

    // A removed tail leaves a valid prefix; the kept head catches it.
    let db = dir.join("state/bank-a/state.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (seq, _) = head.split_once(':').unwrap();
    conn.execute("DELETE FROM audit WHERE seq = ?1", [seq])
        .unwrap();
    ok(node(dir, &["audit", "verify", "--config", "a.toml"]));
    let e = err(node(
        dir,
        &["audit", "verify", "--config", "a.toml", "--head", &head],
    ));
    assert!(e.contains(&format!("head {seq}:")), "{e}");
    // Edit record 3, then drop record 2: each is named.
    conn.execute(
        "UPDATE audit SET record = replace(record, '\"ok\"', '\"OK\"') WHERE seq = 3",
        [],
    )
    .unwrap();
    assert!(
        err(node(dir, &["audit", "verify", "--config", "a.toml"]))
            .contains("audit record 3 was edited")
    );
    conn.execute(
        "UPDATE audit SET record = replace(record, '\"OK\"', '\"ok\"') WHERE seq = 3",
        [],
    )
    .unwrap();
    ok(node(dir, &["audit", "verify", "--config", "a.toml"]));
    conn.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
    assert!(
        err(node(dir, &["audit", "verify", "--config", "a.toml"]))
            .contains("audit records 2 to 2 are missing")
    );
}

/// `check` runs the node's query locally and shows the engine's own error
/// text to the operator (and only there).
#[test]
fn check_runs_the_query_locally() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_banks(dir, ANALYSIS);
    let out = ok(node(dir, &["check", "--config", "a.toml", "analysis.toml"]));
    assert!(
        out.starts_with("ok: the query of bank-a on DataFusion (embedded) returns"),
        "{out}"
    );
    std::fs::write(
        dir.join("bad.toml"),
        ANALYSIS.replace("FROM transfers", "FROM transfers_typo"),
    )
    .unwrap();
    let e = err(node(dir, &["check", "--config", "a.toml", "bad.toml"]));
    assert!(e.contains("transfers_typo"), "{e}");
}

/// A state directory of cleanroom 0.1 (loose files) is migrated into the
/// database on first open; the old files are kept aside.
#[test]
fn a_legacy_state_dir_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_banks(dir, ANALYSIS);
    let hash = cleanroom::Analysis::parse(ANALYSIS)
        .unwrap()
        .hash()
        .to_hex();
    let legacy = dir.join("state/bank-c");
    std::fs::create_dir_all(legacy.join("approvals")).unwrap();
    std::fs::create_dir_all(legacy.join("results")).unwrap();
    std::fs::write(legacy.join(format!("approvals/{hash}.toml")), ANALYSIS).unwrap();
    let sid = "ab".repeat(32);
    std::fs::write(legacy.join("sessions"), format!("{sid}\n")).unwrap();
    std::fs::write(
        legacy.join(format!("results/{sid}.json")),
        format!(
            r#"{{"analysis":"mule-cashout","analysis_hash":"{hash}","sid":"{sid}","noisy":false,"values":[{{"aggregate":"count","value":12}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("c.toml"), config("bank-c", "bank-a", "")).unwrap();
    let listed = ok(node(dir, &["approvals", "--config", "c.toml"]));
    assert!(listed.contains(&hash), "{listed}");
    let results = ok(node(dir, &["results", "--config", "c.toml"]));
    assert!(
        results.contains(&sid) && results.contains("12"),
        "{results}"
    );
    assert!(legacy.join("legacy-files/sessions").is_file());
    assert!(!legacy.join("approvals").exists());
    let export = ok(node(dir, &["audit", "export", "--config", "c.toml"]));
    assert!(
        export.contains("\"migrate\"") && export.contains("1 session ids"),
        "{export}"
    );
    ok(node(dir, &["audit", "verify", "--config", "c.toml"]));
}
