//! Processes of a benchmark run and what Linux says about them: CPU time
//! (`/proc/PID/stat`) and peak resident memory (`VmHWM` in
//! `/proc/PID/status`, reset per phase through `/proc/PID/clear_refs`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// One sample of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU seconds so far.
    pub cpu: f64,
    /// Peak resident set since start or the last reset, bytes.
    pub peak_rss: u64,
}

/// Reads a process's CPU time and peak RSS; `None` once it has exited.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    Some(Sample {
        cpu: (utime + stime) / TICKS,
        peak_rss: hwm_kb * 1024,
    })
}

/// Resets a process's peak RSS to its current RSS (so the next sample's
/// peak is the phase's). Returns whether the kernel allowed it.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A child process killed when dropped.
pub struct Proc {
    /// Its name in the report (`coordinator`, `bank-a`, …).
    pub name: String,
    /// The child.
    pub child: Child,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cleanroom-node serve` for `config` and returns it with the
/// address it printed.
pub fn start_node(bin: &Path, name: &str, config: &Path, log: &Path) -> Result<(Proc, String)> {
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(
        child
            .stdout
            .take()
            .context("the node's stdout is not piped")?,
    )
    .read_line(&mut line)
    .context("reading the node's address")?;
    let proc = Proc {
        name: name.to_string(),
        child,
    };
    match line.trim().strip_prefix("listening on ") {
        Some(addr) => Ok((proc, addr.to_string())),
        None => bail!(
            "{name} did not start (see {}): {:?}",
            log.display(),
            line.trim()
        ),
    }
}
