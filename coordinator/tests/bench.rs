//! Smoke test of `cleanroom-coordinator bench` at 1k keys: real node
//! processes, both matching protocols in one CSV, each combination repeated
//! (the median run reported), the CSV's columns and rows, and both plots
//! written.

use std::process::Command;

use cleanroom_coordinator::bench::report::COLUMNS;

#[test]
fn bench_writes_csv_and_plots() {
    let bin = env!("CARGO_BIN_EXE_cleanroom-coordinator");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench");
    let run = Command::new(bin)
        .args([
            "bench",
            "--keys",
            "1k,2k",
            "--parties",
            "2",
            "--protocol",
            "ecdh-ring,keyed-prf",
            "--bound-sample",
            "1024",
            "--repeat",
            "2",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "bench failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let col = |name: &str| COLUMNS.iter().position(|c| *c == name).unwrap();
    // Every phase of every run, for the coordinator and both nodes, plus
    // totals; under each protocol.
    for protocol in ["ecdh-ring", "keyed-prf"] {
        for keys in ["1000", "2000"] {
            for phase in ["setup", "stream", "match", "release", "finish", "total"] {
                for process in ["coordinator", "bank-a", "bank-b"] {
                    assert!(
                        rows.iter().any(|r| r[col("protocol")] == protocol
                            && r[col("keys_per_party")] == keys
                            && r[col("phase")] == phase
                            && r[col("process")] == process),
                        "no row for {protocol}, {keys} keys, {phase}, {process}:\n{csv}"
                    );
                }
            }
        }
    }
    for r in rows.iter().filter(|r| r[col("phase")] == "total") {
        let wall: f64 = r[col("wall_s")].parse().unwrap();
        let bound: f64 = r[col("bound_s")].parse().unwrap();
        let ratio: f64 = r[col("measured_over_bound")].parse().unwrap();
        assert!(wall > 0.0 && bound > 0.0 && (ratio - wall / bound).abs() < 0.01 * ratio + 0.01);
        // The median of two runs (the higher ratio).
        assert_eq!(r[col("runs")], "2");
        let (lo, hi): (f64, f64) = (
            r[col("ratio_min")].parse().unwrap(),
            r[col("ratio_max")].parse().unwrap(),
        );
        assert!(
            lo <= ratio + 0.001 && ratio <= hi + 0.001,
            "{lo} {ratio} {hi}"
        );
        assert!(r[col("peak_rss_bytes")].parse::<u64>().unwrap() > 1 << 20);
        assert!(r[col("bytes_sent")].parse::<u64>().unwrap() > 0);
        assert!(r[col("bytes_received")].parse::<u64>().unwrap() > 0);
        let kind = if r[col("protocol")] == "keyed-prf" {
            "io"
        } else {
            "crypto"
        };
        assert_eq!(r[col("bound_kind")], kind);
    }
    for svg in ["time.svg", "memory.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("keys per party"),
            "{svg}"
        );
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| ecdh-ring | 2 | 1k |"), "{md}");
    assert!(md.contains("(median of 2; "), "{md}");
    assert!(md.contains("| keyed-prf | 2 | 1k |"), "{md}");
    assert!(md.contains("2 parties × 1k keys: keyed-prf"), "{md}");
}
