//! The in-memory protocol agrees with a plaintext join of the same data,
//! under either matching protocol (`[protocol] psi`).

use std::collections::{BTreeMap, BTreeSet};

use cleanroom::Analysis;
use cleanroom::keys::{KeyPart, encode_key};
use cleanroom::protocol::{ProtocolError, Row, simulate, simulate_streaming};
use cleanroom::session::os_rng;
use proptest::prelude::*;

/// Raw rows of one party: (key id, features). Several rows may share a key.
type RawRows = Vec<(u16, Vec<u64>)>;

const FEATURES: [&str; 2] = ["f0", "f1"];

fn party(i: usize) -> String {
    format!("bank-{}", (b'a' + i as u8) as char)
}

fn analysis(n: usize, extra_privacy: &str) -> Analysis {
    Analysis::parse(&analysis_text(n, extra_privacy)).expect("test analysis parses")
}

fn analysis_text(n: usize, extra_privacy: &str) -> String {
    let mut t = format!("name = \"prop\"\nrecipient = \"{}\"\n", party(n - 1));
    let mut aggs = vec!["\"count\"".to_string()];
    for i in 0..n {
        t += &format!(
            "[parties.{}]\nsql = \"SELECT k, f0, f1 FROM t\"\n",
            party(i)
        );
        for f in FEATURES {
            aggs.push(format!("\"sum({}.{f})\"", party(i)));
        }
    }
    t += &format!(
        "[output]\naggregates = [{}]\n[privacy]\nmin_matched = 0\n{extra_privacy}\n",
        aggs.join(", ")
    );
    t
}

/// GROUP BY key, summing features: what each node's SQL would return.
fn group(raw: &RawRows) -> BTreeMap<u16, Vec<u64>> {
    let mut g: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    for (k, f) in raw {
        let e = g.entry(*k).or_insert_with(|| vec![0; FEATURES.len()]);
        for (a, b) in e.iter_mut().zip(f) {
            *a += b;
        }
    }
    g
}

fn key(k: u16) -> Vec<u8> {
    encode_key(&[
        KeyPart::Str(&format!("acct-{k}")),
        KeyPart::Int(k as i64 % 7),
    ])
}

fn inputs(grouped: &[BTreeMap<u16, Vec<u64>>]) -> BTreeMap<String, Vec<Row>> {
    grouped
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let rows = g
                .iter()
                .map(|(k, f)| Row::new(key(*k), f.clone()))
                .collect();
            (party(i), rows)
        })
        .collect()
}

/// The plaintext join: count and per-party feature sums over common keys.
fn plaintext(grouped: &[BTreeMap<u16, Vec<u64>>]) -> BTreeMap<String, i64> {
    let common: BTreeSet<u16> = grouped[0]
        .keys()
        .filter(|k| grouped.iter().all(|g| g.contains_key(k)))
        .copied()
        .collect();
    let mut out = BTreeMap::new();
    out.insert("count".to_string(), common.len() as i64);
    for (i, g) in grouped.iter().enumerate() {
        for (fi, f) in FEATURES.iter().enumerate() {
            let s: u64 = common.iter().map(|k| g[k][fi]).sum();
            out.insert(format!("sum({}.{f})", party(i)), s as i64);
        }
    }
    out
}

/// `extra` (privacy settings) with the keyed-prf protocol chosen when `prf`.
fn psi(extra: &str, prf: bool) -> String {
    if prf {
        format!("{extra}\n[protocol]\npsi = \"keyed-prf\"\n")
    } else {
        extra.to_string()
    }
}

fn run(grouped: &[BTreeMap<u16, Vec<u64>>], extra_privacy: &str) -> BTreeMap<String, i64> {
    run_in(grouped, extra_privacy, usize::MAX, usize::MAX)
}

/// The run with rows fed in batches of `batch` and lists streamed in chunks
/// of `chunk` points through every hop.
fn run_in(
    grouped: &[BTreeMap<u16, Vec<u64>>],
    extra_privacy: &str,
    batch: usize,
    chunk: usize,
) -> BTreeMap<String, i64> {
    let a = analysis(grouped.len(), extra_privacy);
    let out = simulate_streaming(&a, &inputs(grouped), batch, chunk, &mut os_rng())
        .expect("protocol runs");
    out.release.rows[0]
        .values
        .iter()
        .map(|v| (v.aggregate.clone(), v.value))
        .collect()
}

fn raw_rows(universe: u16) -> impl Strategy<Value = RawRows> {
    prop::collection::vec(
        (0..universe, prop::collection::vec(0u64..1_000_000, 2)),
        0..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn two_parties_agree_with_plaintext_join(a in raw_rows(30), b in raw_rows(30), prf in any::<bool>()) {
        let g = [group(&a), group(&b)];
        prop_assert_eq!(run(&g, &psi("", prf)), plaintext(&g));
    }

    #[test]
    fn three_parties_agree_with_plaintext_join(
        a in raw_rows(20), b in raw_rows(20), c in raw_rows(20), prf in any::<bool>(),
    ) {
        let g = [group(&a), group(&b), group(&c)];
        prop_assert_eq!(run(&g, &psi("", prf)), plaintext(&g));
    }

    #[test]
    fn padding_does_not_change_results(a in raw_rows(25), b in raw_rows(25), prf in any::<bool>()) {
        let g = [group(&a), group(&b)];
        prop_assert_eq!(run(&g, &psi("pad_to_multiple = 16", prf)), plaintext(&g));
    }

    /// Streaming (rows in small batches, lists in small chunks with
    /// boundaries in odd places) gives the same result as one piece.
    #[test]
    fn streaming_equals_one_piece(
        a in raw_rows(20), b in raw_rows(20), c in raw_rows(20),
        batch in 1usize..7, chunk in 1usize..13, three in any::<bool>(), prf in any::<bool>(),
    ) {
        let g = if three { vec![group(&a), group(&b), group(&c)] } else { vec![group(&a), group(&b)] };
        let extra = psi("pad_to_multiple = 5", prf);
        let whole = run(&g, &extra);
        prop_assert_eq!(&run_in(&g, &extra, batch, chunk), &whole);
        prop_assert_eq!(whole, plaintext(&g));
    }
}

fn keys(ids: impl IntoIterator<Item = u16>) -> BTreeMap<u16, Vec<u64>> {
    ids.into_iter().map(|k| (k, vec![k as u64, 1])).collect()
}

#[test]
fn edge_cases() {
    for g in [
        vec![keys([]), keys([])],
        vec![keys([]), keys(0..10)],
        vec![keys(0..10), keys(10..20)],
        vec![keys(0..50), keys(0..50)],
        vec![keys(0..50), keys(0..50), keys(0..50)],
        vec![keys(0..30), keys(10..40), keys(20..50)],
    ] {
        let want = plaintext(&g);
        for prf in [false, true] {
            assert_eq!(run(&g, &psi("", prf)), want, "keyed-prf: {prf}");
        }
    }
    assert_eq!(plaintext(&[keys(0..50), keys(0..50)])["count"], 50);
}

#[test]
fn min_matched_refuses_release() {
    let g = [keys(0..5), keys(0..5)];
    let a = Analysis::parse(&analysis_text(2, "").replace("min_matched = 0", "min_matched = 6"))
        .unwrap();
    let err = simulate(&a, &inputs(&g), &mut os_rng()).unwrap_err();
    assert!(matches!(err, ProtocolError::TooFewMatches), "{err}");
    // The error names no number: the count is what min_matched withholds.
    assert!(
        !err.to_string().chars().any(|c| c.is_ascii_digit()),
        "{err}"
    );
}

#[test]
fn duplicate_keys_are_refused() {
    for prf in [false, true] {
        duplicate_keys_are_refused_under(prf);
    }
}

fn duplicate_keys_are_refused_under(prf: bool) {
    let a = analysis(2, &psi("", prf));
    let mut inp = inputs(&[keys(0..3), keys(0..3)]);
    let dup = inp.get("bank-a").unwrap()[0].clone();
    inp.get_mut("bank-a").unwrap().push(dup);
    let err = simulate(&a, &inp, &mut os_rng()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::DuplicateKey { ref party } if party == "bank-a"),
        "{err}"
    );
}

#[test]
fn dp_clamps_to_bounds_and_adds_noise() {
    for prf in [false, true] {
        dp_clamps_to_bounds_and_adds_noise_under(prf);
    }
}

fn dp_clamps_to_bounds_and_adds_noise_under(prf: bool) {
    let bounds = "[privacy.bounds]\n\"bank-a.f0\" = 5\n\"bank-a.f1\" = 5\n\"bank-b.f0\" = 5\n\"bank-b.f1\" = 5";
    let g = [keys(0..40), keys(0..40)];
    // A huge epsilon: noise is zero with overwhelming probability, so the
    // result is the clamped plaintext.
    let got = run(&g, &psi(&format!("epsilon = 1000000.0\n{bounds}"), prf));
    let clamped: Vec<BTreeMap<u16, Vec<u64>>> = g
        .iter()
        .map(|p| {
            p.iter()
                .map(|(k, f)| (*k, f.iter().map(|v| (*v).min(5)).collect()))
                .collect()
        })
        .collect();
    assert_eq!(got, plaintext(&clamped));
    // A small epsilon: values are noisy but unbiased around the truth.
    let truth = plaintext(&clamped)["sum(bank-a.f0)"];
    let runs: Vec<i64> = (0..20)
        .map(|_| run(&g, &psi(&format!("epsilon = 0.5\n{bounds}"), prf))["sum(bank-a.f0)"])
        .collect();
    assert!(runs.iter().any(|&v| v != truth), "noise was added");
    let mean = runs.iter().sum::<i64>() as f64 / runs.len() as f64;
    assert!((mean - truth as f64).abs() < 15.0, "mean {mean} vs {truth}");
}

#[test]
fn node_steps_refuse_misuse() {
    use cleanroom::SessionId;
    use cleanroom::positions::Positions;
    use cleanroom::protocol::{MaskSumRequest, NodeSession, PeerKeys};
    use cleanroom::share::IdentityKey;

    let a = analysis(2, "");
    let mut rng = os_rng();
    let sid = SessionId::random(&mut rng);
    let ids = [IdentityKey::random(&mut rng), IdentityKey::random(&mut rng)];
    let peers: PeerKeys = [
        ("bank-a".to_string(), ids[0].public()),
        ("bank-b".to_string(), ids[1].public()),
    ]
    .into();
    let mut na = NodeSession::new(&a, sid, "bank-a", &ids[0], &peers, &mut rng).unwrap();
    let nb = NodeSession::new(&a, sid, "bank-b", &ids[1], &peers, &mut rng).unwrap();
    let list = na
        .prepare(inputs(&[keys(0..20)])["bank-a"].clone(), &mut rng)
        .unwrap();
    // Nobody re-blinds its own list.
    let tags = na.length_tags(list.masked.len);
    assert!(matches!(
        na.open_reblind(0, list.masked.len, &tags[0]),
        Err(ProtocolError::Violation(_))
    ));
    // The re-blinding node takes the length only with its owner's tag:
    // not another length, not the tag meant for another node, not none.
    assert!(tags[0].is_empty() && tags[1].len() == 32);
    for (rows, tag) in [
        (list.masked.len + 1, tags[1].clone()),
        (list.masked.len, Vec::new()),
        (list.masked.len, vec![0u8; 32]),
    ] {
        assert!(
            matches!(
                nb.open_reblind(0, rows, &tag),
                Err(ProtocolError::UnauthenticatedLength(ref p)) if p == "bank-a"
            ),
            "{rows}"
        );
    }
    // ...re-blinds only points its sender tagged, at the tagged position:
    // a point the coordinator replaced (by a guess H(sid‖x)), chunks
    // reordered or re-cut, or another list's chunk are all refused...
    let pts = |r: std::ops::Range<usize>| &list.points[32 * r.start..32 * r.end];
    let tag = |off: usize, p: &[u8]| na.chunk_tag(0, off as u64, p);
    let mut stream = nb.open_reblind(0, list.masked.len, &tags[1]).unwrap();
    let unauthenticated = |r: Result<_, ProtocolError>, at: u64| {
        matches!(r, Err(ProtocolError::UnauthenticatedChunk { ref owner, offset })
            if owner == "bank-a" && offset == at)
    };
    let mut guessed = pts(0..5).to_vec();
    guessed[64..96].copy_from_slice(pts(9..10)); // a point swapped in
    assert!(unauthenticated(
        nb.reblind(&mut stream, &guessed, &tag(0, pts(0..5))),
        0
    ));
    assert!(unauthenticated(
        nb.reblind(&mut stream, &guessed, &tag(0, &guessed)[..31]),
        0
    ));
    assert!(unauthenticated(
        nb.reblind(&mut stream, pts(5..8), &tag(5, pts(5..8))),
        0
    ));
    assert!(unauthenticated(
        nb.reblind(&mut stream, pts(0..4), &tag(0, pts(0..5))),
        0
    ));
    assert!(unauthenticated(
        nb.reblind(&mut stream, pts(0..5), &nb.chunk_tag(0, 0, pts(0..5))),
        0
    ));
    let (out, out_tag) = nb
        .reblind(&mut stream, pts(0..5), &tag(0, pts(0..5)))
        .unwrap();
    assert_eq!(
        (out.len(), out_tag.len()),
        (5 * 16, 0),
        "final pass: truncated, untagged"
    );
    // ...refuses a point beyond the owner's length, and names a bad point's
    // position (even one its sender tagged).
    let mut bad = pts(5..8).to_vec();
    bad[32..64].fill(0); // the identity, at list position 6
    assert!(matches!(
        nb.reblind(&mut stream, &bad, &tag(5, &bad)),
        Err(ProtocolError::InvalidPoint(6))
    ));
    let rest = pts(5..list.points.len() / 32);
    assert!(nb.reblind(&mut stream, rest, &tag(5, rest)).is_ok());
    assert!(matches!(
        nb.reblind(&mut stream, pts(0..1), &tag(list.points.len() / 32, pts(0..1))),
        Err(ProtocolError::Violation(ref m)) if m.contains("more points")
    ));
    // Only the unmasker of a list sums its masks, and only once.
    let ask = |owner, n: u64, len| MaskSumRequest {
        owner,
        list_len: len,
        length_tag: Vec::new(),
        positions: Positions::from_ascending(len, &(0..n).collect::<Vec<_>>()).unwrap(),
        pad: vec![7, 9],
    };
    assert!(matches!(
        na.mask_sum(&ask(0, 10, list.masked.len)),
        Err(ProtocolError::Violation(_))
    ));
    // The unmasker sums over the length the list's owner authenticated to
    // it, never over one the coordinator chose.
    let unauthenticated = |r: Result<_, ProtocolError>| matches!(r, Err(ProtocolError::Violation(ref m)) if m.contains("did not authenticate"));
    assert!(unauthenticated(na.mask_sum(&ask(1, 10, 20))));
    na.open_reblind(1, 20, &nb.length_tags(20)[0]).unwrap();
    assert!(unauthenticated(na.mask_sum(&ask(1, 10, 21))));
    // A pad of the wrong width, or positions over another length, are
    // refused.
    let mut short = ask(1, 10, 20);
    short.pad.pop();
    assert!(matches!(
        na.mask_sum(&short),
        Err(ProtocolError::Violation(_))
    ));
    let mut longer = ask(1, 10, 20);
    longer.positions = Positions::from_ascending(21, &[0, 20]).unwrap();
    assert!(matches!(
        na.mask_sum(&longer),
        Err(ProtocolError::Violation(_))
    ));
    assert!(na.mask_sum(&ask(1, 10, 20)).is_ok());
    assert!(matches!(
        na.mask_sum(&ask(1, 5, 20)),
        Err(ProtocolError::Violation(_))
    ));
    // Wrong width rows and a non-party are refused.
    let bad = vec![Row::new(key(1), vec![1])];
    assert!(matches!(
        nb.prepare(bad, &mut rng),
        Err(ProtocolError::WidthMismatch {
            expected: 2,
            got: 1,
            ..
        })
    ));
    assert!(matches!(
        NodeSession::new(&a, sid, "bank-z", &ids[0], &peers, &mut rng),
        Err(ProtocolError::UnknownParty(_))
    ));
    let only_b: PeerKeys = [("bank-b".to_string(), ids[1].public())].into();
    assert!(matches!(
        NodeSession::new(&a, sid, "bank-b", &ids[1], &only_b, &mut rng),
        Err(ProtocolError::MissingPeerKey(p)) if p == "bank-a"
    ));
}

/// Under keyed-prf, one node session per party of a 3-party analysis (the
/// first draws the group key) and their analysis.
fn sessions(
    prf: bool,
) -> (
    Analysis,
    Vec<cleanroom::protocol::NodeSession>,
    cleanroom::SessionId,
) {
    use cleanroom::protocol::{NodeSession, PeerKeys};
    use cleanroom::share::IdentityKey;
    let a = analysis(3, &psi("", prf));
    let mut rng = os_rng();
    let sid = cleanroom::SessionId::random(&mut rng);
    let ids: Vec<IdentityKey> = (0..3).map(|_| IdentityKey::random(&mut rng)).collect();
    let peers: PeerKeys = (0..3).map(|i| (party(i), ids[i].public())).collect();
    let nodes = (0..3)
        .map(|i| NodeSession::new(&a, sid, &party(i), &ids[i], &peers, &mut rng).unwrap())
        .collect();
    (a, nodes, sid)
}

/// A node refuses every keyed-prf message in an ecdh-ring session and every
/// ecdh-ring message in a keyed-prf session; under keyed-prf it needs the
/// group key, sealed for it, once, before its local step.
#[test]
fn each_protocol_refuses_the_others_messages() {
    use cleanroom::Psi;
    use cleanroom::positions::Positions;
    use cleanroom::protocol::MaskSumRequest;
    let violation = |r: Result<(), ProtocolError>, what: &str| {
        assert!(
            matches!(r, Err(ProtocolError::Violation(ref m)) if m.contains(what)),
            "{what}: {r:?}"
        )
    };
    let mut rng = os_rng();

    // ecdh-ring: no group key is drawn, sent or taken, no length comes
    // outside a re-blind stream.
    let (_, mut ring, _) = sessions(false);
    assert!(
        ring.iter()
            .all(|n| n.psi() == Psi::EcdhRing && n.sealed_group_keys().is_empty())
    );
    violation(ring[1].accept_group_key(&[0u8; 48]), "ecdh-ring");
    violation(
        ring[1].accept_length(0, 20, &ring[0].length_tags(20)[1]),
        "ecdh-ring",
    );
    let tag = ring[0].length_tags(20)[1].clone();
    let with_tag = MaskSumRequest {
        owner: 0,
        list_len: 20,
        length_tag: tag,
        positions: Positions::from_ascending(20, &[1, 2]).unwrap(),
        pad: vec![0, 0],
    };
    assert!(matches!(
        ring[1].mask_sum(&with_tag),
        Err(ProtocolError::Violation(ref m)) if m.contains("ecdh-ring")
    ));

    // keyed-prf: the first party seals the key for the two others only.
    let (_, mut prf, _) = sessions(true);
    let boxes = prf[0].sealed_group_keys().to_vec();
    assert_eq!(boxes.len(), 3);
    assert!(boxes[0].is_empty() && boxes[1..].iter().all(|b| b.len() == 48));
    assert!(prf[1..].iter().all(|n| n.sealed_group_keys().is_empty()));
    // No local step before the key; not another party's box; not a
    // tampered one; not at the first party; not twice.
    let rows = inputs(&[keys(0..20)])["bank-a"].clone();
    assert!(matches!(
        prf[1].prepare(rows.clone(), &mut rng),
        Err(ProtocolError::Violation(ref m)) if m.contains("group key")
    ));
    assert!(matches!(
        prf[1].accept_group_key(&boxes[2]),
        Err(ProtocolError::Share(_))
    ));
    let mut tampered = boxes[1].clone();
    tampered[0] ^= 1;
    assert!(matches!(
        prf[1].accept_group_key(&tampered),
        Err(ProtocolError::Share(_))
    ));
    violation(prf[0].accept_group_key(&boxes[1]), "first party");
    prf[1].accept_group_key(&boxes[1]).unwrap();
    violation(prf[1].accept_group_key(&boxes[1]), "already");
    // Both tag a key alike (the key was shared), and no node re-blinds.
    let la = prf[0].prepare(rows.clone(), &mut rng).unwrap();
    let lb = prf[1].prepare(rows, &mut rng).unwrap();
    let (mut sa, mut sb) = (
        la.points.chunks(16).collect::<Vec<_>>(),
        lb.points.chunks(16).collect::<Vec<_>>(),
    );
    sa.sort();
    sb.sort();
    assert_eq!(la.points.len(), 20 * 16);
    assert_eq!(sa, sb);
    let len = la.masked.len;
    assert!(matches!(
        prf[1].open_reblind(0, len, &prf[0].length_tags(len)[1]),
        Err(ProtocolError::Violation(ref m)) if m.contains("keyed-prf")
    ));
    assert!(prf[0].chunk_tag(0, 0, &la.points).is_empty());
    // The unmasker sums masks only over the length its owner tagged for it.
    let ask = |tag: Vec<u8>, list_len| MaskSumRequest {
        owner: 0,
        list_len,
        length_tag: tag,
        positions: Positions::from_ascending(list_len, &[1, 2]).unwrap(),
        pad: vec![0, 0],
    };
    assert!(matches!(
        prf[1].mask_sum(&ask(Vec::new(), len)),
        Err(ProtocolError::Violation(ref m)) if m.contains("did not authenticate")
    ));
    let tags = prf[0].length_tags(len);
    assert!(matches!(
        prf[1].mask_sum(&ask(tags[1].clone(), len + 1)),
        Err(ProtocolError::UnauthenticatedLength(_))
    ));
    assert!(matches!(
        prf[1].mask_sum(&ask(tags[2].clone(), len)),
        Err(ProtocolError::UnauthenticatedLength(_))
    ));
    violation(prf[2].accept_length(0, len, &tags[2]), "does not unmask");
    assert!(prf[1].mask_sum(&ask(tags[1].clone(), len)).is_ok());
}
