//! The `cleanroom-node` command line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use cleanroom::SessionId;
use cleanroom::protocol::Release;
use cleanroom::session::os_rng;
use cleanroom::share::IdentityKey;

use crate::{NodeConfig, StateDir, server, tls};

/// A bank's cleanroom node.
#[derive(Debug, Parser)]
#[command(name = "cleanroom-node", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Output format of `results`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Human-readable table.
    Table,
    /// One JSON object per result, one per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the protocol to authorized coordinators (mutual TLS).
    Serve {
        /// Node config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Approve an analysis file: record its hash in the state directory.
    Approve {
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

/// Formats releases as text (`table`) or JSON lines (`json`).
pub fn format_results(results: &[Release], format: Format) -> String {
    let mut out = String::new();
    for r in results {
        match format {
            Format::Json => {
                out += &serde_json::to_string(r).expect("release serializes");
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
                let w = r
                    .values
                    .iter()
                    .map(|v| v.aggregate.len())
                    .max()
                    .unwrap_or(0)
                    .max(9);
                out += &format!("  {:<w$}  {:>16}\n", "aggregate", "value");
                for v in &r.values {
                    out += &format!("  {:<w$}  {:>16}\n", v.aggregate, v.value);
                }
                out.push('\n');
            }
        }
    }
    out
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
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            node.shutdown().await?;
        }
        Command::Approve { config, analysis } => {
            let cfg = NodeConfig::load(&config)?;
            let text = std::fs::read_to_string(&analysis)
                .with_context(|| format!("reading {}", analysis.display()))?;
            let hash = StateDir::open(&cfg.state_dir)?.approve(&text, &cfg.name)?;
            println!("approved {hash}");
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
            let state = StateDir::open(&cfg.state_dir)?;
            let results = match sid {
                Some(s) => {
                    let sid =
                        SessionId::from_hex(&s).context("session id must be 64 hex characters")?;
                    vec![state.result(&sid)?]
                }
                None => state.results()?,
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
