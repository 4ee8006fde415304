//! The `cleanroom-coordinator` command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use cleanroom_node::tls::TlsMaterial;

use crate::demo::{format_demo, run_demo};
use crate::run::{NodeTarget, RunOptions, run_analysis};

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
    /// Synthetic two-bank fraud demo on loopback (the default command).
    Demo {
        /// Instead of running, write the synthetic banks' CSV files into
        /// DIR/bank-a and DIR/bank-b (for running nodes by hand).
        #[arg(long, value_name = "DIR")]
        write_data: Option<PathBuf>,
        /// With --write-data: ordinary accounts at Bank B.
        #[arg(long, default_value_t = 2_000)]
        accounts: usize,
        /// With --write-data: planted mule accounts.
        #[arg(long, default_value_t = 24)]
        mules: usize,
    },
}

/// Runs the CLI.
pub async fn run(cli: Cli) -> Result<()> {
    let progress = std::io::stderr().is_terminal();
    let default = Command::Demo {
        write_data: None,
        accounts: 2_000,
        mules: 24,
    };
    match cli.command.unwrap_or(default) {
        Command::Run {
            analysis,
            nodes,
            tls_dir,
            name,
        } => {
            let text = std::fs::read_to_string(&analysis)
                .with_context(|| format!("reading {}", analysis.display()))?;
            let tls = TlsMaterial::from_dir(&tls_dir, &name)?;
            let report = run_analysis(&text, &nodes, &tls, &RunOptions { progress }).await?;
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
        } => {
            let data = crate::demo::generate(2026, accounts, mules);
            crate::demo::write_csvs(&data, &dir.join("bank-a"), &dir.join("bank-b"))?;
            println!(
                "wrote {} and {}",
                dir.join("bank-a").display(),
                dir.join("bank-b").display()
            );
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
