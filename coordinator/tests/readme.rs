//! Pins the README's by-hand walk-through: the shell block between
//! `<!-- walkthrough -->` markers runs as written, with the binaries of this
//! build, in a copy of `examples/`, on two free loopback ports instead of
//! 7001/7002.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Copies a directory tree, leaving out what an earlier walk-through made.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if ["certs", "keys", "state"].contains(&e.file_name().to_str().unwrap_or("")) {
            continue;
        }
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn readme_walkthrough_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("<!-- walkthrough -->")
        .nth(1)
        .and_then(|b| b.split("<!-- /walkthrough -->").next())
        .expect("README has a walkthrough block");
    let script = block
        .trim()
        .strip_prefix("```sh")
        .and_then(|b| b.strip_suffix("```"))
        .expect("the walkthrough is one sh code block");
    // The build is this test's own; the binaries are where cargo put them.
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines[1], "cargo build --release");
    assert_eq!(lines[2], "cd examples");
    assert_eq!(lines[3], "B=../target/release");
    let body = lines[4..].join("\n");

    let bin: PathBuf = Path::new(env!("CARGO_BIN_EXE_cleanroom-coordinator"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        bin.join("cleanroom-node").is_file(),
        "build the whole workspace first (cargo test --workspace): no cleanroom-node in {}",
        bin.display()
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("examples");
    copy_dir(&root.join("examples"), &dir);
    let (pa, pb) = (free_port(), free_port());
    let mut body = body
        .replace("127.0.0.1:7001", &format!("127.0.0.1:{pa}"))
        .replace("127.0.0.1:7002", &format!("127.0.0.1:{pb}"));
    for (f, port, old) in [("bank-a.toml", pa, "7001"), ("bank-b.toml", pb, "7002")] {
        let p = dir.join(f);
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(
            t.contains(&format!("127.0.0.1:{old}")),
            "{f} listens on {old}"
        );
        std::fs::write(&p, t.replace(old, &port.to_string())).unwrap();
    }
    // Stop the servers even when a step fails.
    body = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{body}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&body)
        .env("B", &bin)
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "approved ",
        "result delivered to bank-b",
        "sum(bank-a.amount_cents)",
        "audit log intact",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
}

/// `demo --write-data DIR --format F` writes the same tables in every
/// format: each opens in the node's engine with the rows of the CSV.
#[test]
fn demo_writes_its_data_in_every_format() {
    use cleanroom_node::config::{DeltaAt, TableSource};
    let bin = env!("CARGO_BIN_EXE_cleanroom-coordinator");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut counts: Vec<(String, Vec<u64>)> = Vec::new();
    for format in ["csv", "parquet", "arrow", "delta"] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(bin)
            .args(["demo", "--write-data"])
            .arg(dir.path())
            .args(["--accounts", "300", "--mules", "5", "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut rows = Vec::new();
        for (bank, table) in [
            ("bank-a", "transfers"),
            ("bank-b", "deposits"),
            ("bank-b", "withdrawals"),
        ] {
            let base = dir.path().join(bank).join(table);
            let source = match format {
                "delta" => TableSource::Delta {
                    location: base.display().to_string(),
                    at: DeltaAt::Latest,
                },
                ext => TableSource::File(base.with_extension(ext)),
            };
            let tables = std::collections::BTreeMap::from([(table.to_string(), source)]);
            let n = rt.block_on(async {
                let (ctx, versions) = cleanroom_node::data::load_tables(&tables).await.unwrap();
                if format == "delta" {
                    assert_eq!(versions[table], 0);
                }
                ctx.table(table).await.unwrap().count().await.unwrap() as u64
            });
            assert!(n > 0, "{format}: {bank}/{table} is empty");
            rows.push(n);
        }
        counts.push((format.to_string(), rows));
    }
    for (format, rows) in &counts[1..] {
        assert_eq!(rows, &counts[0].1, "{format} holds the rows of the CSV");
    }
}
