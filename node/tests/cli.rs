//! Pins the `cleanroom-node` command line: the README's by-hand flow with
//! real `serve` processes on loopback, and its error behaviour.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use cleanroom_coordinator::{NodeTarget, RunOptions, run_analysis};
use cleanroom_node::tls::TlsMaterial;

const BIN: &str = env!("CARGO_BIN_EXE_cleanroom-node");
const ANALYSIS: &str = include_str!("../../examples/mule-cashout.toml");

fn node(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs cleanroom-node")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(out: Output) -> String {
    assert!(!out.status.success(), "should fail");
    String::from_utf8(out.stderr).unwrap()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and reads the bound address from its first stdout line.
fn serve(dir: &Path, config: &str) -> (Server, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();
    (Server(child), addr)
}

fn config(name: &str, peer: &str, tables: &str) -> String {
    format!(
        "name = \"{name}\"\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state/{name}\"\nidentity_key = \"keys/{name}.key\"\n\
         authorized_coordinators = [\"coordinator\"]\n[tls]\ncert = \"certs/{name}.pem\"\nkey = \"certs/{name}.key\"\n\
         ca = \"certs/ca.pem\"\n[tables]\n{tables}\n[peers]\n{peer} = \"keys/{peer}.pub\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_flow_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    std::fs::write(dir.join("mule.toml"), ANALYSIS).unwrap();
    std::fs::write(
        dir.join("a.toml"),
        config(
            "bank-a",
            "bank-b",
            &format!(
                "transfers = \"{}\"",
                examples.join("data/bank-a/transfers.csv").display()
            ),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.toml"),
        config(
            "bank-b",
            "bank-a",
            &format!(
                "deposits = \"{}\"\nwithdrawals = \"{}\"",
                examples.join("data/bank-b/deposits.csv").display(),
                examples.join("data/bank-b/withdrawals.csv").display()
            ),
        ),
    )
    .unwrap();

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
    let targets = [
        NodeTarget {
            name: "bank-a".into(),
            url: format!("https://{addr_a}"),
        },
        NodeTarget {
            name: "bank-b".into(),
            url: format!("https://{addr_b}"),
        },
    ];
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
    assert_eq!(v["values"][0]["aggregate"], "count");
    assert!(v["values"][0]["value"].as_i64().unwrap() >= 10);
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
    ok(node(
        dir,
        &[
            "certs",
            "--out",
            "certs",
            "--names",
            "bank-a,bank-b,coordinator",
        ],
    ));
    ok(node(dir, &["keygen", "--out", "keys/bank-a.key"]));
    ok(node(dir, &["keygen", "--out", "keys/bank-b.key"]));
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
    assert!(
        err(node(
            dir,
            &["certs", "--out", "c2", "--names", "not a name"]
        ))
        .contains("not a valid DNS name")
    );
}
