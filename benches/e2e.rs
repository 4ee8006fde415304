//! End-to-end benchmark: two nodes on loopback with mutual TLS, CSV tables
//! through DataFusion, a full run. Reports the wall time beside the cost
//! model's bound `(scalar mults + hashes) x single-op cost / cores`.
//!
//! `cargo bench --bench e2e` (sizes: `CLEANROOM_BENCH_KEYS=10000,100000`).

use std::collections::BTreeMap;
use std::time::Instant;

use cleanroom::psi::HashToGroup;
use cleanroom::session::{SessionId, os_rng};
use cleanroom_coordinator::demo::loopback_node_config;
use cleanroom_coordinator::{NodeTarget, RunOptions, run_analysis};
use cleanroom_node::Store;
use cleanroom_node::tls::{TlsMaterial, write_dev_certs};
use curve25519_dalek::scalar::Scalar;

fn per_op_micros<F: FnMut()>(mut f: F) -> f64 {
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

async fn run(n: usize, hash_us: f64, mult_us: f64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let certs = dir.join("certs");
    write_dev_certs(
        &certs,
        &["bank-a".into(), "bank-b".into(), "coordinator".into()],
    )
    .unwrap();
    let analysis = r#"name = "bench"
recipient = "bank-b"
[parties.bank-a]
sql = "SELECT acct, amount FROM t"
[parties.bank-b]
sql = "SELECT acct, amount FROM t"
[output]
aggregates = ["count", "sum(bank-a.amount)", "sum(bank-b.amount)"]
[privacy]
min_matched = 1
"#;
    let mut configs = Vec::new();
    for (name, off) in [("bank-a", 0), ("bank-b", n / 2)] {
        let csv = dir.join(format!("{name}.csv"));
        let mut s = String::from("acct,amount\n");
        for i in off..off + n {
            s += &format!("ACC-{i:08},{}\n", i % 1000);
        }
        std::fs::write(&csv, s).unwrap();
        configs.push(
            loopback_node_config(
                dir,
                &certs,
                name,
                BTreeMap::from([("t".to_string(), csv.into())]),
                BTreeMap::new(),
            )
            .unwrap(),
        );
    }
    let pa = configs[0].identity().unwrap().public().to_hex();
    let pb = configs[1].identity().unwrap().public().to_hex();
    configs[0].peers.insert("bank-b".into(), pb);
    configs[1].peers.insert("bank-a".into(), pa);
    let mut nodes = Vec::new();
    for c in &configs {
        Store::at(&c.state_dir)
            .unwrap()
            .approve(analysis, &c.name)
            .unwrap();
        nodes.push(cleanroom_node::spawn(c.clone()).await.unwrap());
    }
    let targets: Vec<NodeTarget> = ["bank-a", "bank-b"]
        .iter()
        .zip(&nodes)
        .map(|(name, node)| NodeTarget {
            name: name.to_string(),
            url: format!("https://{}", node.addr),
        })
        .collect();
    let tls = TlsMaterial::from_dir(&certs, "coordinator").unwrap();
    let t = Instant::now();
    run_analysis(analysis, &targets, &tls, &RunOptions::default())
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    for node in nodes {
        node.shutdown().await.unwrap();
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    // Two lists of n keys: 2n hashes, 2n own blindings, 2n re-blindings.
    let bound = (2.0 * n as f64 * hash_us + 4.0 * n as f64 * mult_us) / cores / 1e6;
    println!(
        "| {n:>7} keys/party | {secs:>8.2} s | bound {bound:>6.2} s | ratio {:.2} |",
        secs / bound
    );
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let sizes: Vec<usize> = std::env::var("CLEANROOM_BENCH_KEYS")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut rng = os_rng();
    let h = HashToGroup::new(&SessionId::random(&mut rng));
    let p = h.hash(b"x");
    let s = Scalar::random(&mut rng);
    let hash_us = per_op_micros(|| {
        std::hint::black_box(h.hash(std::hint::black_box(b"ACC-00000001")));
    });
    // A blinding step: multiply, compress (and decompress on re-blind).
    let mult_us = per_op_micros(|| {
        let c = std::hint::black_box(p * s).compress();
        std::hint::black_box(c.decompress());
    });
    println!(
        "single-core costs: hash-to-group {hash_us:.1} us, mult+compress+decompress {mult_us:.1} us"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for n in sizes {
        rt.block_on(run(n, hash_us, mult_us));
    }
}
