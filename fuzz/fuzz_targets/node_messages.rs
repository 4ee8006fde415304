//! What a node does with the coordinator's messages, on arbitrary bytes:
//! a re-blind stream's length, tag and points (point decoding, chunk
//! sizes, sender tags), and a mask-sum request's sizes and position bitmap.
//! Errors, never a panic, never more points re-blinded than the
//! authenticated length, and never an untagged chunk.
#![no_main]

use std::sync::OnceLock;

use cleanroom::positions::Positions;
use cleanroom::protocol::{MaskSumRequest, NodeSession};
use libfuzzer_sys::fuzz_target;

mod common;

const ANALYSIS: &str = "name = \"f\"\nrecipient = \"b\"\n[parties.a]\nsql = \"s\"\n\
    [parties.b]\nsql = \"s\"\n[parties.c]\nsql = \"s\"\n\
    [output]\naggregates = [\"count\", \"sum(a.x)\"]\n[privacy]\nmin_matched = 0\n";

struct Fixture {
    a: NodeSession,
    b: NodeSession,
}

/// Party `name`'s session (see [`common::session`]).
fn session(name: &str) -> NodeSession {
    common::session(ANALYSIS, name)
}

fn fixture() -> &'static std::sync::Mutex<Fixture> {
    static F: OnceLock<std::sync::Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        std::sync::Mutex::new(Fixture {
            a: session("a"),
            b: session("b"),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let f = fixture().lock().unwrap();
    let owner = (data[0] % 4) as usize;
    let rows = u64::from(u16::from_le_bytes([data[1], data[2]]));
    let rest = &data[3..];
    // An honest tag for `rows` (a's list), or the fuzzer's bytes as a tag.
    let tag = if data[3] & 1 == 0 {
        f.a.length_tags(rows)[1].clone()
    } else {
        rest[..rest.len().min(32)].to_vec()
    };
    if let Ok(mut stream) = f.b.open_reblind(owner, rows, &tag) {
        for chunk in rest.chunks(96) {
            let before = stream.done();
            // The sender's honest tag (a is b's predecessor), or none.
            let tag = if chunk[0] & 1 == 0 {
                f.a.chunk_tag(owner, before, chunk)
            } else {
                Vec::new()
            };
            let r = f.b.reblind(&mut stream, chunk, &tag);
            assert!(stream.done() <= stream.rows() && stream.done() >= before);
            assert!(r.is_err() || !tag.is_empty(), "re-blinded an untagged chunk");
        }
    }
    // A mask sum with fuzzed sizes and a fuzzed position bitmap, parsed
    // strictly as the node's service does (b unmasks a's list). The length
    // the bitmap is read against is the authenticated one, or (bit 1 of
    // data[6]) the one the fuzzed bytes imply.
    let len = if data[6] & 2 == 0 {
        rows
    } else {
        rest.len() as u64 * 8 - u64::from(data[7] % 8)
    };
    let Ok(positions) = Positions::from_bytes(rest, len) else {
        return;
    };
    assert_eq!(positions.list_len(), len);
    assert!(positions.iter().all(|p| p < len));
    assert_eq!(Positions::from_bytes(&positions.to_bytes(), len).as_ref(), Ok(&positions));
    let req = MaskSumRequest {
        owner,
        list_len: len,
        length_tag: Vec::new(),
        positions,
        pad: vec![u64::from(data[4]); (data[5] % 4) as usize],
    };
    // `mask_sum` answers once per session: fuzz it on a fresh copy, which
    // (mostly) saw a's authenticated length first.
    let honest = f.a.length_tags(rows)[1].clone();
    drop(f);
    let b = session("b");
    if data[6] & 1 == 0 {
        let _ = b.open_reblind(0, rows, &honest);
    }
    let mut b = b;
    let _ = b.mask_sum(&req);
});
