//! Helpers of the node's process-level tests: the `cleanroom-node` binary,
//! `serve` processes on loopback, two banks over the example data.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use cleanroom_coordinator::NodeTarget;
use cleanroom_node::tls::TlsMaterial;
use cleanroom_proto::v1::node_client::NodeClient;
use cleanroom_proto::v1::{SessionRef, SetupRequest};

pub const BIN: &str = env!("CARGO_BIN_EXE_cleanroom-node");
pub const ANALYSIS: &str = include_str!("../../../examples/mule-cashout.toml");

pub fn node(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs cleanroom-node")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn err(out: Output) -> String {
    assert!(!out.status.success(), "should fail");
    String::from_utf8(out.stderr).unwrap()
}

pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and reads the bound address from its first stdout line.
pub fn serve(dir: &Path, config: &str) -> (Server, String) {
    serve_env(dir, config, &[])
}

/// [`serve`] with extra environment variables.
pub fn serve_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> (Server, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config])
        .envs(env.iter().copied())
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

pub fn config(name: &str, peer: &str, tables: &str) -> String {
    format!(
        "name = \"{name}\"\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state/{name}\"\nidentity_key = \"keys/{name}.key\"\n\
         authorized_coordinators = [\"coordinator\"]\n[tls]\ncert = \"certs/{name}.pem\"\nkey = \"certs/{name}.key\"\n\
         ca = \"certs/ca.pem\"\n[tables]\n{tables}\n[peers]\n{peer} = \"keys/{peer}.pub\"\n"
    )
}

/// Writes `a.toml` and `b.toml`: bank-a and bank-b over the example data.
pub fn write_configs(dir: &Path) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let data = |f: &str| examples.join("data").join(f).display().to_string();
    std::fs::write(
        dir.join("a.toml"),
        config(
            "bank-a",
            "bank-b",
            &format!("transfers = \"{}\"", data("bank-a/transfers.csv")),
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
                data("bank-b/deposits.csv"),
                data("bank-b/withdrawals.csv")
            ),
        ),
    )
    .unwrap();
}

/// Development certificates (`certs/`) for bank-a, bank-b and the
/// coordinator, and identity keys (`keys/`) for bank-a and bank-b.
pub fn certs_and_keys(dir: &Path) {
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
}

/// Certificates, identity keys and configs for bank-a and bank-b over the
/// example data in `dir`, and `analysis` written as `analysis.toml` and
/// approved at both.
pub fn two_banks(dir: &Path, analysis: &str) {
    write_configs(dir);
    certs_and_keys(dir);
    std::fs::write(dir.join("analysis.toml"), analysis).unwrap();
    ok(node(
        dir,
        &["approve", "--config", "a.toml", "analysis.toml"],
    ));
    ok(node(
        dir,
        &["approve", "--config", "b.toml", "analysis.toml"],
    ));
}

pub fn targets(addr_a: &str, addr_b: &str) -> [NodeTarget; 2] {
    [
        NodeTarget {
            name: "bank-a".into(),
            url: format!("https://{addr_a}"),
        },
        NodeTarget {
            name: "bank-b".into(),
            url: format!("https://{addr_b}"),
        },
    ]
}

/// The mule analysis with DP: count + three sums at ε = 1 cost ε = 4.
pub fn dp_analysis() -> String {
    ANALYSIS.replace(
        "min_matched = 10",
        "min_matched = 1\nepsilon = 1.0\n[privacy.bounds]\n\"bank-a.transfers\" = 10\n\
         \"bank-a.amount_cents\" = 100000000\n\"bank-b.cashouts\" = 10",
    )
}

/// A channel to the node serving `server`'s certificate at `addr`, as the
/// coordinator (mutual TLS with `dir/certs`).
pub async fn connect(dir: &Path, addr: &str, server: &str) -> tonic::transport::Channel {
    let tls = TlsMaterial::from_dir(&dir.join("certs"), "coordinator").unwrap();
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls.client_config(server))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Calls setup for `sid` of `analysis` at a node and returns the status
/// code of its refusal (a spent sid gives `AlreadyExists`).
pub async fn setup_again(
    dir: &Path,
    addr: &str,
    server: &str,
    sid: Vec<u8>,
    analysis: &str,
) -> tonic::Code {
    let analysis_hash = cleanroom::Analysis::parse(analysis)
        .unwrap()
        .hash()
        .0
        .to_vec();
    NodeClient::new(connect(dir, addr, server).await)
        .setup(SetupRequest {
            session: Some(SessionRef { sid, analysis_hash }),
            analysis_toml: analysis.to_string(),
        })
        .await
        .unwrap_err()
        .code()
}
