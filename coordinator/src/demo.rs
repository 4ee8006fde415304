//! `cleanroom-coordinator demo`: synthetic Bank A / Bank B data with a
//! planted mule ring, two nodes started in-process on loopback with real
//! mutual TLS and throwaway certificates, the fraud analysis approved and
//! run, and the result as Bank B's node stored it printed beside the
//! plaintext truth (which only the demo, holding both banks' data, can know).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use cleanroom::protocol::Release;
use cleanroom::session::os_rng;
use cleanroom::share::IdentityKey;
use cleanroom_node::config::{TableSource, TlsFiles};
use cleanroom_node::tls::{TlsMaterial, write_dev_certs};
use cleanroom_node::{NodeConfig, Store};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::run::{NodeTarget, RunOptions, run_analysis};

/// The demo's analysis (also `examples/mule-cashout.toml`).
pub const ANALYSIS: &str = include_str!("../../examples/mule-cashout.toml");

const DAY: i64 = 86_400;
const START: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// A transfer out of Bank A.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Id.
    pub id: u64,
    /// Sender account at A.
    pub from_account: String,
    /// Destination bank code.
    pub to_bank: String,
    /// Destination account.
    pub to_account: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// Unix seconds.
    pub ts: i64,
}

/// A deposit into an account at Bank B.
#[derive(Debug, Clone)]
pub struct Deposit {
    /// Id.
    pub id: u64,
    /// Account at B.
    pub account: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// Unix seconds.
    pub ts: i64,
}

/// A withdrawal from an account at Bank B.
#[derive(Debug, Clone)]
pub struct Withdrawal {
    /// Id.
    pub id: u64,
    /// Account at B.
    pub account: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// Unix seconds.
    pub ts: i64,
    /// `cash`, `card` or `transfer`.
    pub channel: &'static str,
}

/// Both banks' synthetic data.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Bank A's outgoing transfers.
    pub transfers: Vec<Transfer>,
    /// Bank B's deposits.
    pub deposits: Vec<Deposit>,
    /// Bank B's withdrawals.
    pub withdrawals: Vec<Withdrawal>,
}

/// Generates the demo data: `accounts` ordinary B accounts, `mules` mule
/// accounts that receive high-value transfers from A and cash them out
/// within hours, plus decoys (high-value transfers that are not cashed out,
/// cash-outs of money that did not come from A, small transfers).
pub fn generate(seed: u64, accounts: usize, mules: usize) -> Dataset {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut d = Dataset::default();
    let (mut tid, mut did, mut wid) = (0u64, 0u64, 0u64);
    let acct = |i: usize| format!("B-{:06}", 100_000 + i * 7);
    let mut transfer = |d: &mut Dataset,
                        rng: &mut ChaCha20Rng,
                        to_bank: &str,
                        to: String,
                        amount: u64,
                        ts: i64| {
        tid += 1;
        let from = format!("A-{:06}", rng.random_range(0..50_000u32));
        d.transfers.push(Transfer {
            id: tid,
            from_account: from,
            to_bank: to_bank.into(),
            to_account: to.clone(),
            amount_cents: amount,
            ts,
        });
        if to_bank == "BANKB" {
            did += 1;
            // The transfer lands at B within the hour, the same day.
            d.deposits.push(Deposit {
                id: did,
                account: to,
                amount_cents: amount,
                ts: ts + rng.random_range(60..3_600),
            });
        }
    };
    for day in 0..28i64 {
        let base = START + day * DAY;
        // Ordinary traffic: small transfers to B and to other banks, card spending.
        for _ in 0..accounts / 4 {
            let i = rng.random_range(0..accounts);
            let ts = base + rng.random_range(8 * 3600..18 * 3600);
            let amount = rng.random_range(1_000..200_000);
            let bank = if rng.random_bool(0.6) {
                "BANKB"
            } else {
                "BANKC"
            };
            transfer(&mut d, &mut rng, bank, acct(i), amount, ts);
        }
        for _ in 0..accounts / 3 {
            wid += 1;
            let i = rng.random_range(0..accounts);
            let channel = if rng.random_bool(0.15) {
                "cash"
            } else {
                "card"
            };
            d.withdrawals.push(Withdrawal {
                id: wid,
                account: acct(i),
                amount_cents: rng.random_range(500..40_000),
                ts: base + rng.random_range(0..DAY),
                channel,
            });
        }
        // Decoys: a few high-value transfers to ordinary accounts (no quick cash-out).
        for _ in 0..3 {
            let i = rng.random_range(0..accounts);
            let ts = base + rng.random_range(8 * 3600..12 * 3600);
            let amount = rng.random_range(1_000_000..5_000_000);
            transfer(&mut d, &mut rng, "BANKB", acct(i), amount, ts);
        }
    }
    // The mule ring: every few days each mule receives a high-value transfer
    // and withdraws most of it in cash within hours.
    for m in 0..mules {
        let account = format!("B-M{:05}", m);
        let mut day = rng.random_range(0..4i64);
        while day < 28 {
            let ts = START + day * DAY + rng.random_range(8 * 3600..12 * 3600);
            let amount = rng.random_range(1_000_000..9_000_000);
            transfer(&mut d, &mut rng, "BANKB", account.clone(), amount, ts);
            wid += 1;
            d.withdrawals.push(Withdrawal {
                id: wid,
                account: account.clone(),
                amount_cents: amount * 9 / 10,
                ts: ts + rng.random_range(2 * 3600..10 * 3600),
                channel: "cash",
            });
            day += rng.random_range(3..7i64);
        }
    }
    d
}

/// The plaintext answer to the demo analysis, computed the same way the two
/// local queries and the join define it. Only the demo (holding both banks'
/// data) can compute this.
pub fn plaintext_truth(d: &Dataset) -> BTreeMap<String, i64> {
    let mut a: HashMap<(String, i64), (i64, i64)> = HashMap::new();
    for t in d
        .transfers
        .iter()
        .filter(|t| t.amount_cents >= 1_000_000 && t.to_bank == "BANKB")
    {
        let e = a
            .entry((t.to_account.clone(), t.ts.div_euclid(DAY)))
            .or_default();
        e.0 += 1;
        e.1 += t.amount_cents as i64;
    }
    let mut b: HashMap<(String, i64), i64> = HashMap::new();
    for dep in &d.deposits {
        let cashed = d.withdrawals.iter().any(|w| {
            w.account == dep.account
                && w.channel == "cash"
                && w.ts >= dep.ts
                && w.ts <= dep.ts + DAY
        });
        if cashed {
            *b.entry((dep.account.clone(), dep.ts.div_euclid(DAY)))
                .or_default() += 1;
        }
    }
    let (mut count, mut transfers, mut cents, mut cashouts) = (0, 0, 0, 0);
    for (k, (n, amount)) in &a {
        if let Some(c) = b.get(k) {
            count += 1;
            transfers += n;
            cents += amount;
            cashouts += c;
        }
    }
    BTreeMap::from([
        ("count".to_string(), count),
        ("sum(bank-a.transfers)".to_string(), transfers),
        ("sum(bank-a.amount_cents)".to_string(), cents),
        ("sum(bank-b.cashouts)".to_string(), cashouts),
    ])
}

/// Writes Bank A's `transfers.csv` into `a` and Bank B's `deposits.csv`,
/// `withdrawals.csv` into `b`.
pub fn write_csvs(d: &Dataset, a: &Path, b: &Path) -> Result<()> {
    std::fs::create_dir_all(a)?;
    std::fs::create_dir_all(b)?;
    let mut s = String::from("transfer_id,from_account,to_bank,to_account,amount_cents,ts\n");
    for t in &d.transfers {
        writeln!(
            s,
            "{},{},{},{},{},{}",
            t.id, t.from_account, t.to_bank, t.to_account, t.amount_cents, t.ts
        )?;
    }
    std::fs::write(a.join("transfers.csv"), s)?;
    let mut s = String::from("deposit_id,account,amount_cents,ts\n");
    for x in &d.deposits {
        writeln!(s, "{},{},{},{}", x.id, x.account, x.amount_cents, x.ts)?;
    }
    std::fs::write(b.join("deposits.csv"), s)?;
    let mut s = String::from("withdrawal_id,account,amount_cents,ts,channel\n");
    for w in &d.withdrawals {
        writeln!(
            s,
            "{},{},{},{},{}",
            w.id, w.account, w.amount_cents, w.ts, w.channel
        )?;
    }
    std::fs::write(b.join("withdrawals.csv"), s)?;
    Ok(())
}

/// A node config for `name` under `dir`, listening on an ephemeral loopback
/// port, with the given tables and pinned peer keys.
pub fn loopback_node_config(
    dir: &Path,
    certs: &Path,
    name: &str,
    tables: BTreeMap<String, TableSource>,
    peers: BTreeMap<String, String>,
) -> Result<NodeConfig> {
    let key = IdentityKey::random(&mut os_rng());
    let key_path = dir.join(format!("{name}.key"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(&key_path, key.to_hex())?;
    Ok(NodeConfig {
        name: name.to_string(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: dir.join(format!("state-{name}")),
        identity_key: key_path,
        authorized_coordinators: vec!["coordinator".into()],
        session_ttl_secs: 3600,
        session_max_secs: 86_400,
        stream_idle_secs: 120,
        tls: TlsFiles {
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}.key")),
            ca: certs.join("ca.pem"),
        },
        tables,
        peers,
        engine: Default::default(),
        policy: BTreeMap::new(),
    })
}

/// Runs the demo and returns the report printed by the CLI: Bank B's stored
/// result beside the plaintext truth.
pub async fn run_demo(progress: bool) -> Result<(Release, BTreeMap<String, i64>)> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = tmp.path();
    let data = generate(2026, 2_000, 24);
    write_csvs(&data, &dir.join("bank-a"), &dir.join("bank-b"))?;
    let certs = dir.join("certs");
    write_dev_certs(
        &certs,
        &["bank-a".into(), "bank-b".into(), "coordinator".into()],
    )?;

    let mut a = loopback_node_config(
        dir,
        &certs,
        "bank-a",
        BTreeMap::from([("transfers".into(), dir.join("bank-a/transfers.csv").into())]),
        BTreeMap::new(),
    )?;
    let mut b = loopback_node_config(
        dir,
        &certs,
        "bank-b",
        BTreeMap::from([
            ("deposits".into(), dir.join("bank-b/deposits.csv").into()),
            (
                "withdrawals".into(),
                dir.join("bank-b/withdrawals.csv").into(),
            ),
        ]),
        BTreeMap::new(),
    )?;
    // Pin each other's identity public keys.
    a.peers
        .insert("bank-b".into(), b.identity()?.public().to_hex());
    b.peers
        .insert("bank-a".into(), a.identity()?.public().to_hex());
    for cfg in [&a, &b] {
        Store::at(&cfg.state_dir)?.approve(ANALYSIS, &cfg.name)?;
    }
    let b_state = b.state_dir.clone();
    let node_a = cleanroom_node::spawn(a).await?;
    let node_b = cleanroom_node::spawn(b).await?;
    let targets = [
        NodeTarget {
            name: "bank-a".into(),
            url: format!("https://{}", node_a.addr),
        },
        NodeTarget {
            name: "bank-b".into(),
            url: format!("https://{}", node_b.addr),
        },
    ];
    let tls = TlsMaterial::from_dir(&certs, "coordinator")?;
    let report = run_analysis(
        ANALYSIS,
        &targets,
        &tls,
        &RunOptions {
            progress,
            ..RunOptions::default()
        },
    )
    .await;
    node_a.shutdown().await?;
    node_b.shutdown().await?;
    let report = report?;
    let release = Store::at(&b_state)?.result(&report.sid)?;
    Ok((release, plaintext_truth(&data)))
}

/// Formats the demo's output table.
pub fn format_demo(release: &Release, truth: &BTreeMap<String, i64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nmule-cashout: Bank A's high-value transfers to Bank B accounts that Bank B saw cashed out within 24 h"
    );
    let _ = writeln!(s, "session {}\n", release.sid);
    let _ = writeln!(
        s,
        "  {:<26} {:>18} {:>18}",
        "aggregate", "Bank B received", "plaintext truth"
    );
    let values = release
        .rows
        .first()
        .map_or(&[][..], |r| r.values.as_slice());
    for v in values {
        let t = truth
            .get(&v.aggregate)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let _ = writeln!(s, "  {:<26} {:>18} {:>18}", v.aggregate, v.value, t);
    }
    let all = !values.is_empty()
        && values
            .iter()
            .all(|v| truth.get(&v.aggregate) == Some(&v.value));
    let _ = writeln!(
        s,
        "\n{}",
        if all {
            "match: the clean room's result equals the plaintext join; neither bank saw the other's rows."
        } else {
            "MISMATCH between the clean room's result and the plaintext join"
        }
    );
    s
}
