//! The `cleanroom-node` command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use cleanroom::protocol::Release;
use cleanroom::session::os_rng;
use cleanroom::share::IdentityKey;
use cleanroom::{Analysis, AnalysisHash, SessionId};

use crate::clock::SystemClock;
use crate::store::Approval;
use crate::{NodeConfig, Store, audit, data, server, tls};

/// A bank's cleanroom node.
#[derive(Debug, Parser)]
#[command(name = "cleanroom-node", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Output format of listings.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Human-readable table.
    Table,
    /// One JSON object per line.
    Json,
}

/// Output format of `audit export`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per record and line (for SIEM tools).
    Jsonl,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the protocol to authorized coordinators (mutual TLS).
    Serve {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Approve an analysis file: record it and its hash.
    Approve {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
        /// The analysis (TOML).
        analysis: PathBuf,
    },
    /// Revoke the approval of an analysis: it is refused from now on.
    Revoke {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
        /// The analysis hash (hex), as printed by `approve` or `approvals`.
        hash: String,
    },
    /// List approved (and revoked) analyses: hash, name, parties,
    /// recipient, SQL and date.
    Approvals {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show the privacy budget spent and remaining per coordinator identity.
    Budget {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Verify or export the hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run this node's query of an analysis locally and report the outcome
    /// (rows and schema, or the full error of the query engine). Nothing is
    /// sent anywhere; the engine's errors are shown only here.
    Check {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
        /// The analysis (TOML).
        analysis: PathBuf,
    },
    /// Write a development CA and leaf certificates (not for production).
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated names, e.g. bank-a,bank-b,coordinator.
        #[arg(long, value_delimiter = ',', required = true)]
        names: Vec<String>,
    },
    /// Generate a Ristretto identity key; writes FILE (secret) and FILE.pub
    /// (public, to pin at peers) and prints the public key.
    Keygen {
        /// Where to write the secret key (hex); refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print stored results (this node as recipient).
    Results {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
        /// Only this session (hex); default: all.
        sid: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the chain: names the first edited, dropped, inserted or
    /// reordered record; prints the head to keep outside the node.
    Verify {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
        /// A head `SEQ:HASH` printed by an earlier verify: check that it is
        /// still part of the chain (detects a removed tail).
        #[arg(long)]
        head: Option<String>,
    },
    /// Print every record with its chain fields.
    Export {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

/// Formats releases as text (`table`, one row per group) or JSON lines.
pub fn format_results(results: &[Release], format: Format) -> String {
    let mut out = String::new();
    for r in results {
        match format {
            Format::Json => {
                #[allow(
                    clippy::expect_used,
                    reason = "a Release (strings and integers) always serializes"
                )]
                let line = serde_json::to_string(r).expect("release serializes");
                out += &line;
                out.push('\n');
            }
            Format::Table => {
                out += &format!(
                    "session {}\nanalysis {} ({}){}\n",
                    r.sid,
                    r.analysis,
                    r.analysis_hash,
                    if r.noisy {
                        ", differentially private (noisy)"
                    } else {
                        ""
                    }
                );
                let aggs: Vec<&str> = r
                    .rows
                    .iter()
                    .find(|row| !row.suppressed)
                    .map(|row| row.values.iter().map(|v| v.aggregate.as_str()).collect())
                    .unwrap_or_default();
                let label = r.group_by.as_deref().unwrap_or("");
                let gw = r
                    .rows
                    .iter()
                    .filter_map(|row| row.group.as_ref().map(String::len))
                    .chain([label.len()])
                    .max()
                    .unwrap_or(0);
                let mut line = String::from(" ");
                if r.group_by.is_some() {
                    line += &format!(" {label:<gw$}");
                }
                for a in &aggs {
                    line += &format!("  {a:>w$}", w = a.len().max(12));
                }
                out += line.trim_end();
                out.push('\n');
                for row in &r.rows {
                    let mut line = String::from(" ");
                    if let Some(g) = &row.group {
                        line += &format!(" {g:<gw$}");
                    }
                    if row.suppressed {
                        line += "  (suppressed: fewer than min_matched keys)";
                    } else {
                        for (a, v) in aggs.iter().zip(&row.values) {
                            line += &format!("  {:>w$}", v.value, w = a.len().max(12));
                        }
                    }
                    out += &line;
                    out.push('\n');
                }
                out.push('\n');
            }
        }
    }
    out
}

/// Formats approvals as text or JSON lines.
pub fn format_approvals(approvals: &[Approval], format: Format) -> String {
    let mut out = String::new();
    for a in approvals {
        let parties: Vec<&str> = a.analysis.party_names();
        match format {
            Format::Json => {
                let v = serde_json::json!({
                    "hash": a.hash.to_hex(),
                    "name": a.analysis.name,
                    "parties": parties,
                    "recipient": a.analysis.recipient,
                    "psi": a.analysis.psi.name(),
                    "sql": a.analysis.parties.iter().map(|p| (p.name.clone(), p.sql.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                    "approved_at": a.approved_at,
                    "revoked_at": a.revoked_at,
                    "expires": a.analysis.expires,
                });
                out += &v.to_string();
                out.push('\n');
            }
            Format::Table => {
                out += &format!("{}  {}\n", a.hash, a.analysis.name);
                out += &format!("  approved   {}\n", a.approved_at);
                if let Some(r) = &a.revoked_at {
                    out += &format!("  REVOKED    {r}\n");
                }
                if let Some(e) = &a.analysis.expires {
                    out += &format!("  expires    {e}\n");
                }
                out += &format!("  parties    {}\n", parties.join(", "));
                out += &format!("  recipient  {}\n", a.analysis.recipient);
                // The matching protocol decides what a coordinator
                // colluding with one bank could test (README, leakage).
                out += &format!("  matching   {}\n", a.analysis.psi);
                for p in &a.analysis.parties {
                    out += &format!("  sql {}:\n", p.name);
                    for l in p.sql.trim().lines() {
                        out += &format!("      {}\n", l.trim_end());
                    }
                }
                out.push('\n');
            }
        }
    }
    out
}

fn open_store(cfg: &NodeConfig) -> Result<Store> {
    Ok(Store::open(&cfg.state_dir, SystemClock::shared())?)
}

fn budget_report(cfg: &NodeConfig, store: &Store) -> Result<String> {
    let mut names: Vec<String> = cfg.authorized_coordinators.clone();
    for (n, _) in store.ledger()? {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let mut out = format!(
        "{:<20} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}\n",
        "coordinator", "ε spent", "ε left", "δ spent", "δ left", "DP runs", "exact"
    );
    for n in names {
        let p = cfg.policy_for(&n);
        let s = store.spent(&n)?;
        let eps_left = p.epsilon_budget.map_or("no cap".to_string(), |b| {
            format!("{:.6}", (b - s.epsilon()).max(0.0))
        });
        let delta_left = p.delta_budget.map_or("no cap".to_string(), |b| {
            format!("{:.3e}", (b - s.delta).max(0.0))
        });
        out += &format!(
            "{:<20} {:>12.6} {:>12} {:>12.3e} {:>12} {:>8} {:>8}\n",
            n,
            s.epsilon(),
            eps_left,
            s.delta,
            delta_left,
            s.dp_runs,
            s.exact_runs
        );
    }
    Ok(out)
}

/// Runs the node's query of `analysis` locally and describes the outcome.
async fn check(cfg: &NodeConfig, analysis: &Path) -> Result<String> {
    let text = std::fs::read_to_string(analysis)
        .with_context(|| format!("reading {}", analysis.display()))?;
    let a = Analysis::parse(&text)?;
    if a.party_index(&cfg.name).is_none() {
        bail!("this node ({}) is not a party of the analysis", cfg.name);
    }
    let engine = crate::engine::Engine::from_config(&cfg.engine)?;
    let tables = engine.open(&cfg.tables).await?;
    let versions = tables.versions.clone();
    let rows = data::local_rows(tables, &a, &cfg.name)
        .await
        .with_context(|| format!("query of {} in analysis {}", cfg.name, a.name))?;
    Ok(format!(
        "ok: the query of {} on {} returns {} keys with features {:?}{}\n",
        cfg.name,
        engine.describe(),
        rows.len(),
        a.features(&cfg.name),
        a.grouping
            .as_ref()
            .filter(|g| g.party == cfg.name)
            .map(|g| format!(", grouped by column {:?}", g.column))
            .unwrap_or_default()
    ) + &versions
        .iter()
        .map(|(t, v)| format!("read delta table {t} at version {v}\n"))
        .collect::<String>())
}

/// Runs the CLI with the given arguments.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = NodeConfig::load(&config)?;
            let name = cfg.name.clone();
            let node = server::spawn(cfg).await?;
            tracing::info!(party = %name, addr = %node.addr, "serving");
            // The bound address on stdout, so scripts can use port 0.
            println!("listening on {}", node.addr);
            // SIGTERM (orchestrators) or Ctrl-C: a graceful stop.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
                _ = term.recv() => {}
            }
            tracing::info!("stopping: open sessions are aborted");
            node.shutdown().await?;
            tracing::info!("stopped");
        }
        Command::Approve { config, analysis } => {
            let cfg = NodeConfig::load(&config)?;
            let text = std::fs::read_to_string(&analysis)
                .with_context(|| format!("reading {}", analysis.display()))?;
            let hash = open_store(&cfg)?.approve(&text, &cfg.name)?;
            println!("approved {hash}");
        }
        Command::Revoke { config, hash } => {
            let cfg = NodeConfig::load(&config)?;
            let h = AnalysisHash::from_hex(&hash)
                .context("the analysis hash must be 64 hex characters")?;
            open_store(&cfg)?.revoke(&h)?;
            println!("revoked {h}");
        }
        Command::Approvals { config, format } => {
            let cfg = NodeConfig::load(&config)?;
            print!(
                "{}",
                format_approvals(&open_store(&cfg)?.approvals()?, format)
            );
        }
        Command::Budget { config } => {
            let cfg = NodeConfig::load(&config)?;
            print!("{}", budget_report(&cfg, &open_store(&cfg)?)?);
        }
        Command::Audit {
            command: AuditCommand::Verify { config, head },
        } => {
            let cfg = NodeConfig::load(&config)?;
            let chain = open_store(&cfg)?.audit_chain()?;
            let (seq, hash) = audit::verify(&chain)?;
            if let Some(h) = head {
                let (s, hh) = h
                    .split_once(':')
                    .and_then(|(s, hh)| Some((s.parse::<u64>().ok()?, hh)))
                    .context("--head must be SEQ:HASH as printed by audit verify")?;
                audit::check_head(&chain, s, hh)?;
            }
            println!("audit log intact: {seq} records");
            println!("head {seq}:{hash}");
        }
        Command::Audit {
            command: AuditCommand::Export { config, format },
        } => {
            let cfg = NodeConfig::load(&config)?;
            let ExportFormat::Jsonl = format;
            for r in open_store(&cfg)?.audit_chain()? {
                let mut v: serde_json::Value = serde_json::from_str(&r.json)
                    .with_context(|| format!("audit record {} is not valid JSON", r.seq))?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("seq".into(), r.seq.into());
                    o.insert("prev_hash".into(), r.prev_hash.into());
                    o.insert("hash".into(), r.hash.into());
                }
                println!("{v}");
            }
        }
        Command::Check { config, analysis } => {
            let cfg = NodeConfig::load(&config)?;
            print!("{}", check(&cfg, &analysis).await?);
        }
        Command::Certs { out, names } => {
            for p in tls::write_dev_certs(&out, &names)? {
                println!("wrote {}", p.display());
            }
        }
        Command::Keygen { out } => {
            if out.exists() {
                bail!(
                    "{} exists; refusing to overwrite an identity key",
                    out.display()
                );
            }
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let key = IdentityKey::random(&mut os_rng());
            std::fs::write(&out, key.to_hex())
                .with_context(|| format!("writing {}", out.display()))?;
            restrict_permissions(&out)?;
            let public = out.with_extension("pub");
            std::fs::write(&public, key.public().to_hex())
                .with_context(|| format!("writing {}", public.display()))?;
            println!("{}", key.public().to_hex());
            eprintln!(
                "secret key in {}, public key in {}",
                out.display(),
                public.display()
            );
        }
        Command::Results {
            config,
            sid,
            format,
        } => {
            let cfg = NodeConfig::load(&config)?;
            let store = open_store(&cfg)?;
            let results = match sid {
                Some(s) => {
                    let sid =
                        SessionId::from_hex(&s).context("session id must be 64 hex characters")?;
                    vec![store.result(&sid)?]
                }
                None => store.results()?,
            };
            print!("{}", format_results(&results, format));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn restrict_permissions(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(not(unix))]
fn restrict_permissions(_: &std::path::Path) -> Result<()> {
    Ok(())
}
