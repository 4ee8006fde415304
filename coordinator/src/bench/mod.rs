//! `cleanroom-coordinator bench`: the end-to-end benchmark researchers run
//! with one line. For every party count, key count and matching protocol
//! (`--protocol ecdh-ring,keyed-prf`) it writes the banks' tables as files,
//! starts every node as its own `cleanroom-node serve` process over
//! loopback mTLS, runs the coordinator as its own process, and records per
//! run and per phase the wall time and, per process, CPU seconds and peak
//! RSS, the bytes each node exchanged, and the run's bound measured in the
//! same run: the curve arithmetic for ecdh-ring ([`bound`]); the SQL, the
//! hashing and the transport for keyed-prf ([`io_bound`]). Both protocols
//! run on the same tables. It writes `results.csv`, `results.md`,
//! `time.svg` and `memory.svg` into the output directory.

pub mod bound;
pub mod data;
pub mod io_bound;
pub mod procs;
pub mod report;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use cleanroom::Psi;
use cleanroom::session::os_rng;
use cleanroom::share::IdentityKey;
use cleanroom_node::Store;
use cleanroom_node::tls::write_dev_certs;

use bound::CryptoCost;
use procs::{Proc, Sample, reset_peak, sample, start_node};
use report::{PhaseResult, ProcPhase, RunResult};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Keys per party, one run each.
    pub keys: Vec<u64>,
    /// Party counts, one run each.
    pub parties: Vec<usize>,
    /// Matching protocols, one run each (same tables).
    pub protocols: Vec<Psi>,
    /// Share of each party's keys common to all parties.
    pub overlap: f64,
    /// Output directory.
    pub out: PathBuf,
    /// Also run the peer implementation (OpenMined PSI) on the same keys.
    pub peers: bool,
    /// The peer's runner script.
    pub peer_script: PathBuf,
    /// The `cleanroom-node` binary (default: next to this one).
    pub node_bin: Option<PathBuf>,
    /// Elements timed to measure the crypto bound.
    pub bound_sample: usize,
    /// Runs per combination; the run of median measured/bound ratio is
    /// reported (see [`median_run`]).
    pub repeat: usize,
}

/// The CPU's model name, its widest vector extension and the core count,
/// without commas (so the CSV's first column needs no quoting).
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let flags = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let simd = if has("avx512ifma") {
        "AVX-512 IFMA"
    } else if has("avx2") {
        "AVX2"
    } else {
        "no AVX2"
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model} ({simd}; {cores} cores)").replace(',', ";")
}

/// Runs every combination and writes the outputs.
pub fn run_bench(opts: &BenchOptions) -> Result<Vec<RunResult>> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let node_bin = opts
        .node_bin
        .clone()
        .unwrap_or_else(|| exe.with_file_name("cleanroom-node"));
    if !node_bin.is_file() {
        bail!(
            "no node binary at {} (build the workspace, or pass --node-bin)",
            node_bin.display()
        );
    }
    let cpu = cpu_name();
    eprintln!("measuring the crypto bound on {cpu} ...");
    let cost = CryptoCost::measure(opts.bound_sample);
    eprintln!(
        "  blind {:.2} µs/key, re-blind {:.2} µs/point (all cores)",
        cost.blind * 1e6,
        cost.reblind * 1e6
    );
    let mut runs = Vec::new();
    for &p in &opts.parties {
        for &n in &opts.keys {
            for &psi in &opts.protocols {
                let mut reps = Vec::with_capacity(opts.repeat);
                for k in 1..=opts.repeat.max(1) {
                    let of = if opts.repeat > 1 {
                        format!(" (run {k} of {})", opts.repeat)
                    } else {
                        String::new()
                    };
                    eprintln!("run: {psi}, {p} parties × {} keys{of}", data::label(n));
                    let r = run_one(opts, &exe, &node_bin, p, n, psi, &cost, k == 1)?;
                    eprintln!(
                        "  {:.2} s ({} bound {:.2} s, ratio {:.2})",
                        r.wall(),
                        r.bound_kind,
                        r.bound,
                        r.ratio()
                    );
                    reps.push(r);
                }
                // The peer ran with the first repetition only.
                let peer = reps.iter().find_map(|r| r.peer.clone());
                let mut r = median_run(reps).context("no run")?;
                r.peer = peer;
                r.cpu = cpu.clone();
                if r.ratios.len() > 1 {
                    eprintln!(
                        "  median of {} runs: {:.2} s, ratio {:.2} (from {:.2} to {:.2})",
                        r.ratios.len(),
                        r.wall(),
                        r.ratio(),
                        r.ratio_min(),
                        r.ratio_max()
                    );
                }
                if let Some((name, t)) = &r.peer {
                    eprintln!("  {name}: {t:.2} s");
                }
                runs.push(r);
                // Keep what is done, should a later run fail.
                report::write_csv(&opts.out.join("results.csv"), &runs)?;
            }
        }
    }
    report::plot(&opts.out, &runs)?;
    std::fs::write(opts.out.join("results.md"), report::markdown(&runs))?;
    Ok(runs)
}

/// The run of median measured/bound ratio among repetitions of one
/// combination (for an even count, the higher of the two middle ones), with
/// every repetition's ratio, in run order, in its `ratios`.
pub fn median_run(reps: Vec<RunResult>) -> Option<RunResult> {
    let ratios: Vec<f64> = reps.iter().map(RunResult::ratio).collect();
    let mut order: Vec<usize> = (0..reps.len()).collect();
    order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]));
    let mid = *order.get(order.len() / 2)?;
    let mut r = reps.into_iter().nth(mid)?;
    r.ratios = ratios;
    Some(r)
}

/// One node's config file (TOML), listening on an ephemeral loopback port.
fn node_config(dir: &Path, name: &str, table: &Path, peers: &BTreeMap<String, String>) -> String {
    let mut t = format!(
        "name = \"{name}\"\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nidentity_key = \"{}\"\n\
         authorized_coordinators = [\"coordinator\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
         [tables]\nt = \"{}\"\n[peers]\n",
        dir.join(format!("state-{name}")).display(),
        dir.join(format!("{name}.key")).display(),
        dir.join(format!("certs/{name}.pem")).display(),
        dir.join(format!("certs/{name}.key")).display(),
        dir.join("certs/ca.pem").display(),
        table.display()
    );
    for (peer, key) in peers.iter().filter(|(p, _)| *p != name) {
        t += &format!("{peer} = \"{key}\"\n");
    }
    t
}

/// One run of a combination in its directory under `runs/` (a repetition
/// replaces the previous one's files); the peer too when `with_peer`.
#[allow(clippy::too_many_arguments)]
fn run_one(
    opts: &BenchOptions,
    exe: &Path,
    node_bin: &Path,
    parties: usize,
    keys: u64,
    psi: Psi,
    cost: &CryptoCost,
    with_peer: bool,
) -> Result<RunResult> {
    let dir = opts
        .out
        .join("runs")
        .join(format!("{parties}p-{}-{psi}", data::label(keys)));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let common = (opts.overlap * keys as f64).round() as u64;
    let names: Vec<String> = (0..parties).map(data::party).collect();
    let mut tables = Vec::new();
    for i in 0..parties {
        tables.push(data::write_table(&dir.join("data"), i, keys, common)?);
    }
    let mut certs = names.clone();
    certs.push("coordinator".into());
    write_dev_certs(&dir.join("certs"), &certs)?;
    let mut publics = BTreeMap::new();
    for n in &names {
        let k = IdentityKey::random(&mut os_rng());
        std::fs::write(dir.join(format!("{n}.key")), k.to_hex())?;
        publics.insert(n.clone(), k.public().to_hex());
    }
    let analysis = data::analysis(parties, psi);
    std::fs::write(dir.join("analysis.toml"), &analysis)?;
    let mut procs: Vec<Proc> = Vec::new();
    let mut targets = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let config = dir.join(format!("{n}.toml"));
        std::fs::write(&config, node_config(&dir, n, &tables[i], &publics))?;
        Store::at(&dir.join(format!("state-{n}")))?.approve(&analysis, n)?;
        let (p, addr) = start_node(node_bin, n, &config, &dir.join(format!("{n}.log")))?;
        procs.push(p);
        targets.push(format!("{n}=https://{addr}"));
    }

    let report = dir.join("report.json");
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--analysis")
        .arg(dir.join("analysis.toml"))
        .arg("--tls-dir")
        .arg(dir.join("certs"))
        .arg("--events")
        .arg("--report-json")
        .arg(&report)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("coordinator.log"))?);
    for t in &targets {
        cmd.arg("--node").arg(t);
    }
    let mut child = cmd.spawn().context("starting the coordinator")?;
    let stdout = child
        .stdout
        .take()
        .context("the coordinator's stdout is not piped")?;
    let mut coordinator = Proc {
        name: "coordinator".into(),
        child,
    };
    let pid = coordinator.pid();
    // Every process by name and pid (the coordinator first).
    let mut all: Vec<(String, u32)> = vec![("coordinator".into(), pid)];
    all.extend(procs.iter().map(|p| (p.name.clone(), p.pid())));

    // Sample every process at every phase boundary the coordinator prints.
    let mut started: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let mut phases: Vec<PhaseResult> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(phase), Some(edge)) = (ev["phase"].as_str(), ev["edge"].as_str()) else {
            continue;
        };
        let now: Vec<Sample> = all
            .iter()
            .map(|(_, pid)| sample(*pid).unwrap_or_default())
            .collect();
        if edge == "start" {
            for (_, pid) in &all {
                reset_peak(*pid);
            }
            started.insert(phase.to_string(), now);
        } else if let Some(before) = started.remove(phase) {
            phases.push(PhaseResult {
                phase: phase.to_string(),
                wall: 0.0,
                procs: all
                    .iter()
                    .zip(before.iter().zip(&now))
                    .map(|((name, _), (b, a))| ProcPhase {
                        process: name.clone(),
                        cpu: (a.cpu - b.cpu).max(0.0),
                        peak_rss: a.peak_rss,
                    })
                    .collect(),
            });
        }
    }
    let status = coordinator.child.wait()?;
    if !status.success() {
        bail!(
            "the coordinator failed (see {})",
            dir.join("coordinator.log").display()
        );
    }
    let rep: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report)
            .with_context(|| format!("reading {}", report.display()))?,
    )?;
    for ph in rep["phases"].as_array().into_iter().flatten() {
        if let Some(p) = phases.iter_mut().find(|p| ph["name"] == p.phase.as_str()) {
            p.wall = ph["seconds"].as_f64().unwrap_or(0.0);
        }
    }
    let total = PhaseResult {
        phase: "total".into(),
        wall: phases.iter().map(|p| p.wall).sum(),
        procs: all
            .iter()
            .enumerate()
            .map(|(i, (name, _))| ProcPhase {
                process: name.clone(),
                cpu: phases.iter().map(|ph| ph.procs[i].cpu).sum(),
                peak_rss: phases
                    .iter()
                    .map(|ph| ph.procs[i].peak_rss)
                    .max()
                    .unwrap_or(0),
            })
            .collect(),
    };
    phases.push(total);
    let traffic = rep["traffic"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["node"].as_str().unwrap_or_default().to_string(),
                t["sent"].as_u64().unwrap_or(0),
                t["received"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    drop(procs);
    // The bound, measured now that the run's processes are gone.
    let (bound, bound_kind) = match psi {
        Psi::EcdhRing => (cost.bound(parties, keys), "crypto"),
        Psi::KeyedPrf => {
            eprintln!("  measuring the I/O bound (SQL + hashing + transport) ...");
            let parsed = cleanroom::Analysis::parse(&analysis)?;
            let io = io_bound::IoBound::measure(&parsed, &tables, &dir.join("certs"))?;
            eprintln!(
                "  SQL {:.2} s + hashing {:.2} s + transport {:.2} s",
                io.sql, io.hashing, io.transport
            );
            (io.total(), "io")
        }
    };
    let peer = if with_peer && opts.peers && parties == 2 && psi == opts.protocols[0] {
        Some(run_peer(opts, &tables, &dir)?)
    } else {
        None
    };
    Ok(RunResult {
        cpu: String::new(),
        protocol: psi.name().into(),
        parties,
        keys,
        overlap: opts.overlap,
        phases,
        traffic,
        bound,
        bound_kind: bound_kind.into(),
        peer,
        ratios: Vec::new(),
    })
}

/// Runs the peer script on two tables; it prints the seconds its protocol
/// took (excluding its own start-up) as the last line.
fn run_peer(opts: &BenchOptions, tables: &[PathBuf], dir: &Path) -> Result<(String, f64)> {
    let out = Command::new("bash")
        .arg(&opts.peer_script)
        .arg(&tables[0])
        .arg(&tables[1])
        .stderr(std::fs::File::create(dir.join("peer.log"))?)
        .output()
        .with_context(|| format!("running {}", opts.peer_script.display()))?;
    if !out.status.success() {
        bail!(
            "the peer script failed (see {})",
            dir.join("peer.log").display()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .context("the peer script's last line must be JSON")?;
    Ok((
        v["peer"].as_str().unwrap_or("peer").to_string(),
        v["seconds"].as_f64().context("peer seconds")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(wall: f64, bound: f64) -> RunResult {
        RunResult {
            phases: vec![PhaseResult {
                phase: "total".into(),
                wall,
                procs: Vec::new(),
            }],
            bound,
            ..RunResult::default()
        }
    }

    #[test]
    fn the_median_run_is_the_one_of_median_ratio_and_keeps_every_ratio() {
        // Ratios 1.5, 1.1, 1.3 (walls and bounds both vary).
        let r = median_run(vec![run(1.5, 1.0), run(2.2, 2.0), run(1.3, 1.0)]).unwrap();
        assert_eq!((r.wall(), r.bound), (1.3, 1.0));
        assert_eq!(r.ratios.len(), 3);
        assert_eq!((r.runs(), r.ratio_min(), r.ratio_max()), (3, 1.1, 1.5));
        // An even count: the higher of the two middle ones.
        let r = median_run(vec![
            run(1.2, 1.0),
            run(1.4, 1.0),
            run(1.0, 1.0),
            run(1.6, 1.0),
        ]);
        assert_eq!(r.unwrap().wall(), 1.4);
        // One run: itself, its ratio the spread.
        let r = median_run(vec![run(1.2, 1.0)]).unwrap();
        assert_eq!((r.runs(), r.ratio_min(), r.ratio_max()), (1, 1.2, 1.2));
        assert!(median_run(Vec::new()).is_none());
    }
}
