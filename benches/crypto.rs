//! Criterion micro-benchmarks of the protocol's building blocks and the
//! in-memory protocol. `cargo bench --bench crypto`.

use std::collections::BTreeMap;
use std::hint::black_box;

use cleanroom::Analysis;
use cleanroom::keys::{KeyPart, encode_key};
use cleanroom::prf::GroupKey;
use cleanroom::protocol::{Row, simulate};
use cleanroom::psi::{BlindingKey, HashToGroup, POINT_LEN};
use cleanroom::session::{SessionId, os_rng};
use cleanroom::share::MaskSeed;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;

fn keys(n: usize, offset: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| encode_key(&[KeyPart::Str(&format!("ACC-{:08}", i + offset))]))
        .collect()
}

fn primitives(c: &mut Criterion) {
    let mut rng = os_rng();
    let sid = SessionId::random(&mut rng);
    let h = HashToGroup::new(&sid);
    let k = BlindingKey::random(&mut rng);
    let key = keys(1, 0).remove(0);
    let p = h.hash(&key);
    let s = Scalar::random(&mut rng);

    let mut g = c.benchmark_group("single");
    g.bench_function("hash_to_group", |b| b.iter(|| h.hash(black_box(&key))));
    g.bench_function("scalar_mult", |b| b.iter(|| black_box(p) * black_box(s)));
    g.bench_function("compress", |b| b.iter(|| black_box(p).compress()));
    g.bench_function("decompress", |b| {
        let c = p.compress();
        b.iter(|| black_box(c).decompress())
    });
    g.finish();

    // Batches: throughput per element, using all cores.
    const N: usize = 4096;
    let ks = keys(N, 0);
    let blinded = k.blind_keys(&h, &ks);
    let pts: Vec<RistrettoPoint> = (0..256).map(|i| p * Scalar::from(i as u64 + 1)).collect();
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("blind_4096", |b| {
        b.iter(|| k.blind_keys(&h, black_box(&ks)))
    });
    g.bench_function("reblind_4096", |b| {
        b.iter(|| k.reblind(black_box(&blinded), POINT_LEN).unwrap())
    });
    // keyed-prf's prepare step: one HMAC-SHA-256 per key.
    let tagger = GroupKey::random(&mut rng).tagger(&sid);
    g.bench_function("tag_4096_keyed_prf", |b| {
        b.iter(|| tagger.tag_keys(black_box(&ks)))
    });
    g.throughput(Throughput::Elements(256));
    g.bench_function("double_and_compress_batch_256", |b| {
        b.iter(|| RistrettoPoint::double_and_compress_batch(black_box(&pts)))
    });
    g.bench_function("compress_each_256", |b| {
        b.iter(|| {
            black_box(&pts)
                .iter()
                .map(|p| p.compress())
                .collect::<Vec<_>>()
        })
    });
    let seed = MaskSeed::from_bytes([7; 32]);
    let mut values = vec![12345u64; N * 2];
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("mask_4096_rows_x2", |b| {
        b.iter(|| seed.mask_rows(black_box(&mut values), 2))
    });
    g.finish();
}

fn protocol(c: &mut Criterion) {
    let analysis = Analysis::parse(
        r#"name = "bench"
recipient = "bank-b"
[parties.bank-a]
sql = "SELECT k, v FROM t"
[parties.bank-b]
sql = "SELECT k, v FROM t"
[output]
aggregates = ["count", "sum(bank-a.v)", "sum(bank-b.v)"]
[privacy]
min_matched = 1
"#,
    )
    .unwrap();
    let mut g = c.benchmark_group("in_memory_protocol_2_parties");
    g.sample_size(10);
    for n in [10_000usize, 100_000] {
        // Half of each list overlaps.
        let inputs: BTreeMap<String, Vec<Row>> = [("bank-a", 0), ("bank-b", n / 2)]
            .into_iter()
            .map(|(p, off)| {
                let rows = keys(n, off)
                    .into_iter()
                    .map(|key| Row::new(key, vec![3]))
                    .collect();
                (p.to_string(), rows)
            })
            .collect();
        g.throughput(Throughput::Elements(2 * n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &inputs, |b, inputs| {
            b.iter(|| simulate(&analysis, inputs, &mut os_rng()).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, primitives, protocol);
criterion_main!(benches);
