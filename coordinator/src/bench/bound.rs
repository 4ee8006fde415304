//! The crypto bound of a run, measured on this machine in the same run: the
//! curve work of the protocol alone (hash-to-group, scalar multiplication,
//! compression and decompression), on all cores, without I/O.

use std::time::Instant;

use cleanroom::SessionId;
use cleanroom::psi::{BlindingKey, HashToGroup, POINT_LEN, TRUNCATED_LEN};
use cleanroom::session::os_rng;

/// Seconds per element on all cores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CryptoCost {
    /// Hash to the group, multiply, compress (a node's own list).
    pub blind: f64,
    /// Decompress, multiply, compress (one hop of another list).
    pub reblind: f64,
}

impl CryptoCost {
    /// Measures both on `sample` elements, best of three.
    pub fn measure(sample: usize) -> Self {
        let mut rng = os_rng();
        let h = HashToGroup::new(&SessionId::random(&mut rng));
        let (k1, k2) = (BlindingKey::random(&mut rng), BlindingKey::random(&mut rng));
        let keys: Vec<[u8; 16]> = (0..sample as u128).map(|i| i.to_be_bytes()).collect();
        let best = |f: &mut dyn FnMut()| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let mut points = Vec::new();
        let blind = best(&mut || points = k1.blind_keys(&h, &keys)) / sample as f64;
        let reblind = best(&mut || {
            // Blinded points are valid; an error would only skip the work.
            let out = k2.reblind(&points, POINT_LEN).unwrap_or_default();
            std::hint::black_box(out);
        }) / sample as f64;
        // The final pass truncates; its cost is the same.
        let _ = TRUNCATED_LEN;
        CryptoCost { blind, reblind }
    }

    /// The bound of a run of `parties` lists of `rows` rows each: every list
    /// blinded once by its owner and re-blinded by each other party, all on
    /// this machine's cores.
    pub fn bound(&self, parties: usize, rows: u64) -> f64 {
        let lists = parties as f64 * rows as f64;
        lists * self.blind + lists * (parties as f64 - 1.0) * self.reblind
    }
}
