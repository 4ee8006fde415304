//! The benchmark's outputs: `results.csv` (one row per run, phase and
//! process) and two SVG plots (plotters): time against keys per party with
//! the crypto bound dashed, and peak memory per input row.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

/// What one process did in one phase (or in the whole run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcPhase {
    /// `coordinator`, `bank-a`, …
    pub process: String,
    /// CPU seconds.
    pub cpu: f64,
    /// Peak resident set, bytes.
    pub peak_rss: u64,
}

/// One phase of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseResult {
    /// Phase name, or `total`.
    pub phase: String,
    /// Wall seconds.
    pub wall: f64,
    /// Per process.
    pub procs: Vec<ProcPhase>,
}

/// One benchmark run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunResult {
    /// The CPU model and vector extensions.
    pub cpu: String,
    /// Matching protocol.
    pub protocol: String,
    /// Parties.
    pub parties: usize,
    /// Keys per party.
    pub keys: u64,
    /// Share of keys common to all parties.
    pub overlap: f64,
    /// Phases, then the `total`.
    pub phases: Vec<PhaseResult>,
    /// Bytes each node sent to / received from the coordinator.
    pub traffic: Vec<(String, u64, u64)>,
    /// The run's bound, seconds, measured in the same run.
    pub bound: f64,
    /// Which bound: `crypto` (ecdh-ring: curve arithmetic alone) or `io`
    /// (keyed-prf: SQL + hashing + transport alone).
    pub bound_kind: String,
    /// A peer's time on the same keys (name, seconds), if run.
    pub peer: Option<(String, f64)>,
    /// The measured/bound ratio of every repetition of this combination,
    /// in run order, this run being the median one (see
    /// [`super::median_run`]); one ratio for a single run, none for a run
    /// not yet summarized.
    pub ratios: Vec<f64>,
}

impl RunResult {
    /// Wall seconds of the whole run.
    pub fn wall(&self) -> f64 {
        self.phases
            .iter()
            .find(|p| p.phase == "total")
            .map_or(0.0, |p| p.wall)
    }

    /// Wall time over the bound.
    pub fn ratio(&self) -> f64 {
        self.wall() / self.bound
    }

    /// Runs of this combination (1 unless repeated).
    pub fn runs(&self) -> usize {
        self.ratios.len().max(1)
    }

    /// The smallest ratio among the repetitions (this run's if single).
    pub fn ratio_min(&self) -> f64 {
        self.ratios.iter().copied().fold(self.ratio(), f64::min)
    }

    /// The largest ratio among the repetitions (this run's if single).
    pub fn ratio_max(&self) -> f64 {
        self.ratios.iter().copied().fold(self.ratio(), f64::max)
    }

    /// Peak RSS per input row of the largest node, and of the coordinator
    /// (per input row of all banks together).
    pub fn rss_per_row(&self) -> (f64, f64) {
        let total = self.phases.iter().find(|p| p.phase == "total");
        let peak = |node: bool| {
            total
                .into_iter()
                .flat_map(|p| &p.procs)
                .filter(|p| (p.process == "coordinator") != node)
                .map(|p| p.peak_rss)
                .max()
                .unwrap_or(0) as f64
        };
        (
            peak(true) / self.keys as f64,
            peak(false) / (self.keys as f64 * self.parties as f64),
        )
    }
}

/// The CSV's columns.
pub const COLUMNS: [&str; 22] = [
    "cpu",
    "protocol",
    "parties",
    "keys_per_party",
    "overlap",
    "phase",
    "process",
    "wall_s",
    "cpu_s",
    "peak_rss_bytes",
    "rss_bytes_per_row",
    "bytes_sent",
    "bytes_received",
    "bound_s",
    "bound_kind",
    "measured_over_bound",
    "peer",
    "peer_s",
    "peer_over_measured",
    "runs",
    "ratio_min",
    "ratio_max",
];

/// Writes `results.csv`.
pub fn write_csv(path: &Path, runs: &[RunResult]) -> Result<()> {
    let mut s = COLUMNS.join(",");
    s.push('\n');
    for r in runs {
        for ph in &r.phases {
            let total = ph.phase == "total";
            for p in &ph.procs {
                let node = p.process != "coordinator";
                let rows = if node {
                    r.keys as f64
                } else {
                    r.keys as f64 * r.parties as f64
                };
                let (sent, received) = if !total {
                    (String::new(), String::new())
                } else if node {
                    r.traffic
                        .iter()
                        .find(|t| t.0 == p.process)
                        .map_or((String::new(), String::new()), |t| {
                            (t.2.to_string(), t.1.to_string())
                        })
                } else {
                    let (a, b) = r
                        .traffic
                        .iter()
                        .fold((0, 0), |(a, b), t| (a + t.1, b + t.2));
                    (a.to_string(), b.to_string())
                };
                let (runs, ratio_min, ratio_max) = if total {
                    (
                        r.runs().to_string(),
                        format!("{:.3}", r.ratio_min()),
                        format!("{:.3}", r.ratio_max()),
                    )
                } else {
                    Default::default()
                };
                let (bound, kind, ratio, peer, peer_s, peer_ratio) = if total {
                    let (peer, peer_s, peer_ratio) = match &r.peer {
                        Some((n, t)) => {
                            (n.clone(), format!("{t:.3}"), format!("{:.3}", t / r.wall()))
                        }
                        None => Default::default(),
                    };
                    (
                        format!("{:.6}", r.bound),
                        r.bound_kind.clone(),
                        format!("{:.3}", r.ratio()),
                        peer,
                        peer_s,
                        peer_ratio,
                    )
                } else {
                    Default::default()
                };
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{:.6},{:.3},{},{:.1},{},{},{},{},{},{},{},{},{},{},{}",
                    csv(&r.cpu),
                    r.protocol,
                    r.parties,
                    r.keys,
                    r.overlap,
                    ph.phase,
                    p.process,
                    ph.wall,
                    p.cpu,
                    p.peak_rss,
                    p.peak_rss as f64 / rows,
                    sent,
                    received,
                    bound,
                    kind,
                    ratio,
                    peer,
                    peer_s,
                    peer_ratio,
                    runs,
                    ratio_min,
                    ratio_max
                );
            }
        }
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

fn csv(s: &str) -> String {
    if s.contains(',') || s.contains('"') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

const COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

/// A labelled line: (keys per party, value) points.
type Series = (String, Vec<(f64, f64)>);

/// Series of (keys, value) per party count (and protocol).
fn series(runs: &[RunResult], f: impl Fn(&RunResult) -> f64) -> Vec<Series> {
    let mut keys: Vec<(String, usize)> = runs
        .iter()
        .map(|r| (r.protocol.clone(), r.parties))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(proto, p)| {
            let mut pts: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r.parties == p && r.protocol == proto)
                .map(|r| (r.keys as f64, f(r).max(1e-6)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (format!("{proto}, {p} parties"), pts)
        })
        .collect()
}

fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    let lo = if lo.is_finite() { lo } else { 1.0 };
    (lo / 2.0)..(hi.max(lo) * 2.0)
}

/// Draws `time.svg` (wall time and crypto bound against keys per party) and
/// `memory.svg` (peak RSS per input row against keys per party).
pub fn plot(dir: &Path, runs: &[RunResult]) -> Result<()> {
    line_plot(
        &dir.join("time.svg"),
        "end-to-end time (solid) and bound (dashed: crypto for ecdh-ring, I/O for keyed-prf)",
        "seconds",
        &series(runs, RunResult::wall),
        &series(runs, |r| r.bound),
    )?;
    line_plot(
        &dir.join("memory.svg"),
        "peak RSS per input row: largest node (solid), coordinator (dashed)",
        "bytes per row",
        &series(runs, |r| r.rss_per_row().0),
        &series(runs, |r| r.rss_per_row().1),
    )
}

/// One log-log plot against keys per party: a solid and a dashed line per
/// series, in the same colour, with a legend.
fn line_plot(
    path: &Path,
    title: &str,
    y_desc: &str,
    solid: &[Series],
    dashed: &[Series],
) -> Result<()> {
    let err = |e: String| anyhow::anyhow!("plotting {}: {e}", path.display());
    let all = solid.iter().chain(dashed).flat_map(|(_, p)| p.iter());
    let xs = range(all.clone().map(|v| v.0));
    let ys = range(all.map(|v| v.1));
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.log_scale(), ys.log_scale())
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("keys per party")
        .y_desc(y_desc)
        .x_label_formatter(&|x| super::data::label(x.round() as u64))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, ((name, pts), (_, dpts))) in solid.iter().zip(dashed).enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        chart
            .draw_series(DashedLineSeries::new(dpts.iter().copied(), 6, 4, c.into()))
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// A Markdown table of the runs (for the README).
pub fn markdown(runs: &[RunResult]) -> String {
    let peers = runs.iter().any(|r| r.peer.is_some());
    let mut s = String::from(
        "| protocol | parties | keys per party | wall s | bound | bound s | measured/bound | node peak RSS B/row | coordinator B/row | MB per node (sent+received) |",
    );
    s += if peers {
        " peer | peer s | peer/cleanroom |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    } else {
        "\n|---|---|---|---|---|---|---|---|---|---|\n"
    };
    for r in runs {
        let (n, c) = r.rss_per_row();
        let bytes = r.traffic.iter().map(|t| t.1 + t.2).max().unwrap_or(0);
        // The median run's ratio, and the spread when repeated.
        let ratio = if r.runs() > 1 {
            format!(
                "{:.2} (median of {}; {:.2}–{:.2})",
                r.ratio(),
                r.runs(),
                r.ratio_min(),
                r.ratio_max()
            )
        } else {
            format!("{:.2}", r.ratio())
        };
        let _ = write!(
            s,
            "| {} | {} | {} | {:.2} | {} | {:.2} | {} | {:.0} | {:.0} | {:.1} |",
            r.protocol,
            r.parties,
            super::data::label(r.keys),
            r.wall(),
            r.bound_kind,
            r.bound,
            ratio,
            n,
            c,
            bytes as f64 / 1e6,
        );
        if peers {
            let _ = match &r.peer {
                Some((name, t)) => write!(s, " {name} | {t:.2} | {:.2} |", t / r.wall()),
                None => write!(s, " | | |"),
            };
        }
        s.push('\n');
    }
    // Protocol against protocol, same parties and keys, same run.
    for r in runs.iter().filter(|r| r.protocol == "keyed-prf") {
        if let Some(ring) = runs
            .iter()
            .find(|o| o.protocol == "ecdh-ring" && o.parties == r.parties && o.keys == r.keys)
        {
            let _ = writeln!(
                s,
                "\n{} parties × {} keys: keyed-prf {:.1}× faster than ecdh-ring end to end.",
                r.parties,
                super::data::label(r.keys),
                ring.wall() / r.wall()
            );
        }
    }
    s
}
