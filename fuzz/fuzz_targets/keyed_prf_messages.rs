//! What a node does with the coordinator's messages in a keyed-prf session,
//! on arbitrary bytes: the sealed group key (the honest box, the honest box
//! with fuzzed bytes xored in or cut, or fuzzed bytes), an owner's length
//! tag, and a mask-sum request carrying that tag with fuzzed sizes and a
//! fuzzed position bitmap. Errors, never a panic; a group key opens only
//! from the first party's own box, and only once; a length is accepted
//! only under its owner's tag; masks are summed over no length the owner
//! did not authenticate; no re-blind stream is opened.
#![no_main]

use std::sync::OnceLock;

use cleanroom::positions::Positions;
use cleanroom::protocol::{MaskSumRequest, NodeSession};
use libfuzzer_sys::fuzz_target;

mod common;

const ANALYSIS: &str = "name = \"f\"\nrecipient = \"c\"\n[protocol]\npsi = \"keyed-prf\"\n\
    [parties.a]\nsql = \"s\"\n[parties.b]\nsql = \"s\"\n[parties.c]\nsql = \"s\"\n\
    [output]\naggregates = [\"count\", \"sum(a.x)\"]\n[privacy]\nmin_matched = 0\n";

/// Party `name`'s session (see [`common::session`]).
fn session(name: &str) -> NodeSession {
    common::session(ANALYSIS, name)
}

/// Party a's session, drawn once per process (its group key with it).
fn first() -> &'static std::sync::Mutex<NodeSession> {
    static A: OnceLock<std::sync::Mutex<NodeSession>> = OnceLock::new();
    A.get_or_init(|| std::sync::Mutex::new(session("a")))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let a = first().lock().unwrap();
    let rest = &data[6..];
    // The group key b receives: a's box for b, as sealed, with fuzzed
    // bytes xored in, cut short, or replaced by fuzzed bytes.
    let honest = a.sealed_group_keys()[1].clone();
    let sealed = match data[0] % 4 {
        0 => honest.clone(),
        1 => honest
            .iter()
            .zip(rest.iter().chain(std::iter::repeat(&0)))
            .map(|(h, x)| h ^ x)
            .collect(),
        2 => honest[..rest.len() % (honest.len() + 1)].to_vec(),
        _ => rest.to_vec(),
    };
    let b = session("b");
    let opened = b.accept_group_key(&sealed);
    assert_eq!(
        opened.is_ok(),
        sealed == honest,
        "a group key opened from another box"
    );
    if opened.is_ok() {
        assert!(
            b.accept_group_key(&honest).is_err(),
            "a group key accepted twice"
        );
    }
    assert!(
        a.accept_group_key(&sealed).is_err(),
        "the first party accepted a group key"
    );
    // No re-blind stream in a keyed-prf session, whatever it carries.
    let rows = u64::from(u16::from_le_bytes([data[1], data[2]]));
    assert!(b.open_reblind(0, rows, &a.length_tags(rows)[1]).is_err());
    // An owner's length tag (b unmasks a's list, owner 0): a's honest tag
    // for `rows`, or fuzzed bytes; for a fuzzed owner.
    let owner = (data[3] % 4) as usize;
    let tag = if data[4] & 1 == 0 {
        a.length_tags(rows)[1].clone()
    } else {
        rest[..rest.len().min(32)].to_vec()
    };
    let accepted = b.accept_length(owner, rows, &tag);
    if accepted.is_ok() {
        assert!(
            owner == 0 && tag == a.length_tags(rows)[1],
            "an untagged length accepted"
        );
    }
    // A mask sum with that tag, fuzzed sizes and a fuzzed bitmap, on a
    // fresh session (it answers once): over the tagged length, or (bit 1
    // of data[4]) the one the fuzzed bytes imply.
    let len = if data[4] & 2 == 0 {
        rows
    } else {
        rest.len() as u64 * 8 - u64::from(data[5] % 8)
    };
    let Ok(positions) = Positions::from_bytes(rest, len) else {
        return;
    };
    let req = MaskSumRequest {
        owner,
        list_len: len,
        length_tag: if data[4] & 4 == 0 {
            tag.clone()
        } else {
            Vec::new()
        },
        positions,
        pad: vec![u64::from(data[5]); (data[3] % 3) as usize],
    };
    let mut fresh = session("b");
    let honest_len_tag = a.length_tags(len)[1].clone();
    drop(a);
    if fresh.mask_sum(&req).is_ok() {
        assert_eq!(
            (req.owner, &req.length_tag),
            (0, &honest_len_tag),
            "masks summed over a length its owner did not tag"
        );
    }
});
