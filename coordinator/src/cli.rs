//! The `cleanroom-coordinator` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use cleanroom_node::tls::TlsMaterial;

use crate::demo::{format_demo, run_demo};
use crate::run::{NodeTarget, PhaseEdge, PhaseHook, RunOptions, RunReport, run_analysis};

/// The run's report as JSON: where the result went, phase times and bytes
/// per node. Never a released number (the coordinator has none).
pub fn report_json_text(r: &RunReport) -> String {
    serde_json::json!({
        "sid": r.sid.to_hex(),
        "analysis_hash": r.analysis_hash.to_hex(),
        "recipient": r.recipient,
        "stored_as": r.stored_as,
        "phases": r.phases.iter().map(|p| serde_json::json!({"name": p.name, "seconds": p.seconds})).collect::<Vec<_>>(),
        "traffic": r.traffic.iter().map(|t| serde_json::json!({"node": t.node, "sent": t.sent, "received": t.received})).collect::<Vec<_>>(),
    })
    .to_string()
}

/// The cleanroom coordinator: runs one analysis across bank nodes.
#[derive(Debug, Parser)]
#[command(name = "cleanroom-coordinator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an analysis across the given nodes.
    Run {
        /// The analysis file (TOML), approved at every node.
        #[arg(long)]
        analysis: PathBuf,
        /// A node as NAME=https://HOST:PORT; one per party.
        #[arg(long = "node", required = true)]
        nodes: Vec<NodeTarget>,
        /// Directory with ca.pem and this coordinator's NAME.pem / NAME.key.
        #[arg(long)]
        tls_dir: PathBuf,
        /// The coordinator's certificate name in the TLS directory.
        #[arg(long, default_value = "coordinator")]
        name: String,
        /// Print one JSON line per phase start and end on stdout (for the
        /// benchmark, which samples the processes there).
        #[arg(long)]
        events: bool,
        /// Write the run's report (phases, bytes per node) as JSON here.
        #[arg(long, value_name = "FILE")]
        report_json: Option<PathBuf>,
        /// Override a deadline, as PHASE=SECONDS (repeatable). Phases and
        /// defaults: setup=30 (connect and setup), stall=60 (longest silence
        /// on a stream while a node owes a message), local=14400 (a local
        /// step's query and blinding), release=30 (mask sum and delivery),
        /// release-per-1m=10 (added to a mask sum per million rows),
        /// finish=10.
        #[arg(long = "deadline", value_name = "PHASE=SECONDS")]
        deadlines: Vec<String>,
    },
    /// Print each node's visible tables: names, columns, types and row
    /// counts rounded to two significant digits (never a value).
    Catalog {
        /// A node as NAME=https://HOST:PORT; repeat per node.
        #[arg(long = "node", required = true)]
        nodes: Vec<NodeTarget>,
        /// Directory with ca.pem and this coordinator's NAME.pem / NAME.key.
        #[arg(long)]
        tls_dir: PathBuf,
        /// The coordinator's certificate name in the TLS directory.
        #[arg(long, default_value = "coordinator")]
        name: String,
    },
    /// End-to-end benchmark: real node processes over loopback mTLS, one run
    /// per party count and key count; writes results.csv, results.md,
    /// time.svg and memory.svg.
    Bench {
        /// Keys per party, comma-separated (10k, 100k, 1M, ...).
        #[arg(long, value_delimiter = ',', value_parser = crate::bench::data::parse_count, default_value = "10k,100k")]
        keys: Vec<u64>,
        /// Party counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "2")]
        parties: Vec<usize>,
        /// Matching protocols, comma-separated (ecdh-ring, keyed-prf): each
        /// runs on the same tables, into the same CSV and plots.
        #[arg(long = "protocol", value_delimiter = ',', value_parser = parse_psi, default_value = "ecdh-ring")]
        protocols: Vec<cleanroom::Psi>,
        /// Share of each party's keys common to all parties.
        #[arg(long, default_value_t = 0.5)]
        overlap: f64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Also time OpenMined PSI (cardinality mode) on the same keys, for
        /// two parties (installs it into a venv on first use).
        #[arg(long)]
        peers: bool,
        /// The peer's runner script.
        #[arg(long, default_value = "benches/peers/openmined_psi.sh")]
        peer_script: PathBuf,
        /// The cleanroom-node binary (default: next to this one).
        #[arg(long)]
        node_bin: Option<PathBuf>,
        /// Elements timed to measure the crypto bound.
        #[arg(long, default_value_t = 1 << 16)]
        bound_sample: usize,
        /// Runs each combination this many times and reports the run whose
        /// measured/bound ratio is the median (the CSV and table also give
        /// the smallest and largest ratio): one run's ratio moves with
        /// whatever else the machine is doing. keyed-prf measures its I/O
        /// bound right after each run; ecdh-ring's crypto bound is measured
        /// once per benchmark. The peer (--peers) runs once.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Synthetic two-bank fraud demo on loopback (the default command).
    Demo {
        /// Instead of running, write the synthetic banks' tables into
        /// DIR/bank-a and DIR/bank-b (for running nodes by hand).
        #[arg(long, value_name = "DIR")]
        write_data: Option<PathBuf>,
        /// With --write-data: ordinary accounts at Bank B.
        #[arg(long, default_value_t = 2_000)]
        accounts: usize,
        /// With --write-data: planted mule accounts.
        #[arg(long, default_value_t = 24)]
        mules: usize,
        /// With --write-data: the tables' format (csv, parquet, arrow, or
        /// delta: a Delta Lake table per table, a directory).
        #[arg(long, default_value = "csv")]
        format: cleanroom_node::data::TableFormat,
    },
}

/// Runs the CLI.
pub async fn run(cli: Cli) -> Result<()> {
    let progress = std::io::stderr().is_terminal();
    let default = Command::Demo {
        write_data: None,
        accounts: 2_000,
        mules: 24,
        format: cleanroom_node::data::TableFormat::Csv,
    };
    match cli.command.unwrap_or(default) {
        Command::Run {
            analysis,
            nodes,
            tls_dir,
            name,
            events,
            report_json,
            deadlines: overrides,
        } => {
            let mut deadlines = crate::Deadlines::default();
            for d in &overrides {
                deadlines
                    .set(d)
                    .map_err(|e| anyhow::anyhow!("--deadline {e}"))?;
            }
            let text = std::fs::read_to_string(&analysis)
                .with_context(|| format!("reading {}", analysis.display()))?;
            let tls = TlsMaterial::from_dir(&tls_dir, &name)?;
            let on_phase: Option<PhaseHook> = events.then(|| {
                Arc::new(|phase: &str, edge: PhaseEdge| {
                    let edge = match edge {
                        PhaseEdge::Start => "start",
                        PhaseEdge::End => "end",
                    };
                    // One line per event, flushed, so a reader sees it now.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", serde_json::json!({"phase": phase, "edge": edge}));
                    let _ = out.flush();
                }) as PhaseHook
            });
            let opts = RunOptions {
                progress: progress && !events,
                on_phase,
                deadlines,
            };
            let report = run_analysis(&text, &nodes, &tls, &opts).await?;
            if let Some(path) = report_json {
                std::fs::write(&path, report_json_text(&report))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("session   {}", report.sid);
            println!("analysis  {}", report.analysis_hash);
            println!(
                "result delivered to {} and stored there as {}",
                report.recipient, report.stored_as
            );
            println!(
                "(the coordinator never sees the numbers: read them with `cleanroom-node results` at {})",
                report.recipient
            );
        }
        Command::Bench {
            keys,
            parties,
            protocols,
            overlap,
            out,
            peers,
            peer_script,
            node_bin,
            bound_sample,
            repeat,
        } => {
            if !(0.0..=1.0).contains(&overlap) {
                bail!("--overlap must be between 0 and 1");
            }
            if parties.iter().any(|&p| !(2..=26).contains(&p)) {
                bail!("--parties must be between 2 and 26");
            }
            if repeat == 0 {
                bail!("--repeat must be at least 1");
            }
            let opts = crate::bench::BenchOptions {
                keys,
                parties,
                protocols,
                overlap,
                out: out.clone(),
                peers,
                peer_script,
                node_bin,
                bound_sample: bound_sample.max(256),
                repeat,
            };
            let runs = tokio::task::spawn_blocking(move || crate::bench::run_bench(&opts))
                .await
                .context("benchmark worker")??;
            print!("{}", crate::bench::report::markdown(&runs));
            println!("wrote {}", out.display());
        }
        Command::Catalog {
            nodes,
            tls_dir,
            name,
        } => {
            let tls = TlsMaterial::from_dir(&tls_dir, &name)?;
            let catalogs = crate::catalog::fetch_catalogs(&nodes, &tls).await?;
            print!("{}", crate::catalog::format_catalogs(&catalogs));
        }
        Command::Demo {
            write_data: Some(dir),
            accounts,
            mules,
            format,
        } => {
            let data = crate::demo::generate(2026, accounts, mules);
            crate::demo::write_csvs(&data, &dir.join("bank-a"), &dir.join("bank-b"))?;
            for csv in [
                "bank-a/transfers.csv",
                "bank-b/deposits.csv",
                "bank-b/withdrawals.csv",
            ] {
                let out = cleanroom_node::data::convert_csv(&dir.join(csv), format).await?;
                println!("wrote {}", out.display());
            }
        }
        Command::Demo {
            write_data: None, ..
        } => {
            let (release, truth) = run_demo(progress).await?;
            print!("{}", format_demo(&release, &truth));
            if release
                .rows
                .iter()
                .flat_map(|r| &r.values)
                .any(|v| truth.get(&v.aggregate) != Some(&v.value))
            {
                bail!("demo result does not match the plaintext truth");
            }
        }
    }
    Ok(())
}

/// Parses a matching protocol's name (`--protocol`).
fn parse_psi(s: &str) -> Result<cleanroom::Psi, String> {
    cleanroom::Psi::from_name(s.trim())
        .ok_or_else(|| format!("{s:?} is not a protocol: use ecdh-ring or keyed-prf"))
}
