//! Privacy properties of the protocol, pinned on the in-memory run's
//! transcript (everything each party receives): what a party receives must
//! not depend on what it must not learn.

use std::collections::BTreeMap;

use cleanroom::Analysis;
use cleanroom::keys::{KeyPart, encode_key};
use cleanroom::protocol::{Inbound, ProtocolError, Row, simulate};
use cleanroom::session::os_rng;

fn key(s: &str) -> Vec<u8> {
    encode_key(&[KeyPart::Str(s)])
}

fn two_party(recipient: &str, privacy: &str) -> Analysis {
    Analysis::parse(&format!(
        "name = \"p\"\nrecipient = \"{recipient}\"\n[parties.bank-a]\nsql = \"s\"\n[parties.bank-b]\nsql = \"s\"\n\
         [output]\naggregates = [\"count\", \"sum(bank-a.g)\", \"sum(bank-b.f)\"]\n[privacy]\nmin_matched = 0\n{privacy}\n"
    ))
    .unwrap()
}

/// Two banks of 40 keys each, `matched` of them common: bank B's key `i`
/// has feature `fb(i)`, each of bank A's has `fa`.
fn overlap_inputs(matched: usize, fa: u64, fb: fn(u64) -> u64) -> BTreeMap<String, Vec<Row>> {
    let b_rows = (0..40)
        .map(|i| Row::new(key(&format!("k{i}")), vec![fb(i)]))
        .collect();
    let a_rows = (0..40)
        .map(|i| {
            let k = if i < matched {
                format!("k{i}")
            } else {
                format!("a{i}")
            };
            Row::new(key(&k), vec![fa])
        })
        .collect();
    BTreeMap::from([
        ("bank-a".to_string(), a_rows),
        ("bank-b".to_string(), b_rows),
    ])
}

/// Every subset of `size` rows of a masked list whose sum equals `target`
/// (the recipient's subset-sum attack on what it receives for its own list).
fn subset_sums(masked: &[u64], width: usize, size: usize, target: &[u64]) -> Vec<Vec<usize>> {
    let n = masked.len() / width;
    let mut hits = Vec::new();
    let mut pick = Vec::new();
    fn go(start: usize, n: usize, size: usize, pick: &mut Vec<usize>, f: &mut dyn FnMut(&[usize])) {
        if pick.len() == size {
            f(pick);
            return;
        }
        for i in start..n {
            pick.push(i);
            go(i + 1, n, size, pick, f);
            pick.pop();
        }
    }
    go(0, n, size, &mut pick, &mut |s| {
        let mut sum = vec![0u64; width];
        for &j in s {
            for (a, b) in sum.iter_mut().zip(&masked[j * width..(j + 1) * width]) {
                *a = a.wrapping_add(*b);
            }
        }
        if sum == target {
            hits.push(s.to_vec());
        }
    });
    hits
}

/// The recipient knows its own masked rows (it made them) and its own
/// shuffle. Before the fix it received `Y_R`, the masked sum over exactly the
/// matched rows of its own list, and could find them by subset sum. With the
/// coordinator's pad it receives `Y_R + r_R`: uniform, so no subset of its
/// rows explains it, whichever rows matched.
#[test]
fn recipient_cannot_tell_which_of_its_rows_matched() {
    let a = two_party("bank-b", "");
    // Bank B's rows: b0/b1 and b2/b3 have equal features, so the two runs
    // below release the same count and sums.
    let fb = [10u64, 10, 20, 20, 31, 47, 53, 71];
    let b_rows: Vec<Row> = fb
        .iter()
        .enumerate()
        .map(|(i, &f)| Row::new(key(&format!("b{i}")), vec![f]))
        .collect();
    for matched in [["b0", "b2"], ["b1", "b3"]] {
        let a_rows: Vec<Row> = matched
            .iter()
            .chain(&["only-a"])
            .map(|k| Row::new(key(k), vec![5]))
            .collect();
        let inputs = BTreeMap::from([
            ("bank-a".to_string(), a_rows),
            ("bank-b".to_string(), b_rows.clone()),
        ]);
        let out = simulate(&a, &inputs, &mut os_rng()).unwrap();
        assert_eq!(out.release.get("count"), Some(2));
        assert_eq!(out.release.get("sum(bank-b.f)"), Some(30));
        let own = &out.transcript.lists[1];
        let Some(Inbound::Deliver(d)) = out.transcript.received[1].last() else {
            panic!("the recipient receives a delivery last");
        };
        // What the recipient receives for its own list is no subset sum of
        // its own masked rows (on the unpadded protocol it was exactly one:
        // the matched rows).
        assert_eq!(
            subset_sums(&own.masked.values, own.masked.width, 2, &d.sums[1]),
            Vec::<Vec<usize>>::new(),
            "the recipient can locate its matched rows"
        );
        // Nor is the unmasker's request for that list (whose pad travels
        // with it) anything the recipient sees: the pad goes to bank-a only.
        assert!(
            out.transcript.received[1]
                .iter()
                .all(|m| !matches!(m, Inbound::MaskSum(r) if r.owner == 1))
        );
    }
}

/// The unmasker's request carries the position set as a bitmap of the list
/// and the pad as fixed 64-bit words: its size is fixed by the list's length
/// and width (which the unmasker verifies, and which the list's stream
/// already shows on the network), whatever the count. The earlier ascending
/// varints grew with the count and their values, so even the TLS record
/// sizes told a network observer roughly `m`.
#[test]
fn mask_sum_request_size_is_independent_of_the_count() {
    use cleanroom_proto::v1::{MaskSumRequest, SessionRef};
    use prost::Message;
    let a = two_party("bank-b", "");
    let mut sizes = Vec::new();
    for matched in [0usize, 1, 17, 40] {
        // Bank A: 40 keys, `matched` of them also bank B's.
        let inputs = overlap_inputs(matched, 1, |i| i);
        let out = simulate(&a, &inputs, &mut os_rng()).unwrap();
        assert_eq!(out.release.get("count"), Some(matched as i64));
        for m in out.transcript.received.iter().flatten() {
            if let Inbound::MaskSum(r) = m {
                assert_eq!(r.positions.count(), matched as u64);
                // The request as the coordinator sends it.
                let wire = MaskSumRequest {
                    session: Some(SessionRef {
                        sid: vec![0; 32],
                        analysis_hash: vec![0; 32],
                    }),
                    owner: r.owner as u32,
                    list_len: r.list_len,
                    length_tag: r.length_tag.clone(),
                    positions: r.positions.to_bytes(),
                    pad: r.pad.clone(),
                };
                sizes.push((r.owner, r.list_len, wire.encoded_len()));
            }
        }
    }
    // Same list lengths in every run, so the same request sizes.
    assert_eq!(sizes.len(), 8);
    for owner in [0, 1] {
        let mine: Vec<_> = sizes.iter().filter(|s| s.0 == owner).collect();
        assert!(mine.iter().all(|s| s == &mine[0]), "{sizes:?}");
    }
}

/// The delivery to the recipient (step 6) has a size fixed by the analysis,
/// whatever the release: the count and the masked sums are fixed-width
/// words and the sealed mask sums of fixed length. TLS hides contents, not
/// lengths, so the count as a varint (the earlier wire form) told a network
/// observer its magnitude and, under DP, its sign.
#[test]
fn delivery_size_is_independent_of_the_release() {
    use cleanroom::protocol::{Delivery, sealed_mask_sum_len};
    use cleanroom_coordinator::run::deliver_request;
    use cleanroom_proto::v1::{DeliverRequest, SessionRef};
    use prost::Message;
    // The sizes of `d` as sent, and of `d` with every count and word at
    // its extremes; the message reads back exactly as sent.
    fn sizes(d: &Delivery, a: &Analysis) -> Vec<usize> {
        // Every sealed mask sum has the length the coordinator checks for.
        let n = a.parties.len();
        let layout = cleanroom::protocol::Layout::new(a);
        let recipient = a.party_index(&a.recipient).unwrap();
        for (owner, sealed) in d.sealed.iter().enumerate() {
            let u = cleanroom::protocol::ring::unmasker(owner, n);
            let want = sealed_mask_sum_len(layout.row_width(owner), u, recipient);
            assert_eq!(sealed.as_ref().map_or(0, Vec::len), want);
        }
        let session = || SessionRef {
            sid: vec![0; 32],
            analysis_hash: vec![0; 32],
        };
        let wire = deliver_request(session(), d.clone());
        let back = DeliverRequest::decode(wire.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, wire);
        assert_eq!(back.count, d.count);
        let mut out = vec![wire.encoded_len()];
        let mut extreme = d.clone();
        let counts: Vec<Option<i64>> = match d.count {
            Some(_) => [i64::MIN, -1, 0, 1, 1 << 40, i64::MAX].map(Some).to_vec(),
            None => vec![None],
        };
        for count in counts {
            extreme.count = count;
            for word in [0, 1, u64::MAX] {
                for s in &mut extreme.sums {
                    s.iter_mut().for_each(|v| *v = word);
                }
                let wire = deliver_request(session(), extreme.clone());
                let back = DeliverRequest::decode(wire.encode_to_vec().as_slice()).unwrap();
                assert_eq!((back.count, &back.sums), (count, &wire.sums));
                out.push(wire.encoded_len());
            }
        }
        out
    }
    fn delivery(out: &cleanroom::protocol::SimulationOutcome) -> &Delivery {
        out.transcript
            .received
            .iter()
            .flatten()
            .find_map(|m| match m {
                Inbound::Deliver(d) => Some(d),
                _ => None,
            })
            .expect("a delivery")
    }
    // Ungrouped, two banks, count released: 0, 1, 17 or 40 matches, with
    // and without DP (whose counts may be negative).
    let plain = two_party("bank-b", "");
    let dp = two_party(
        "bank-b",
        "epsilon = 1.0\n[privacy.bounds]\n\"bank-a.g\" = 9\n\"bank-b.f\" = 9\n",
    );
    for (analysis, draws) in [(&plain, 1), (&dp, 5)] {
        let mut all = Vec::new();
        let mut counts = Vec::new();
        for matched in [0usize, 1, 17, 40] {
            let inputs = overlap_inputs(matched, 7, |i| i % 10);
            for _ in 0..draws {
                let out = simulate(analysis, &inputs, &mut os_rng()).unwrap();
                let d = delivery(&out);
                assert_eq!(d.sums.len(), 2);
                counts.push(d.count.unwrap());
                all.extend(sizes(d, analysis));
            }
        }
        if draws == 1 {
            assert_eq!(counts, [0, 1, 17, 40]);
        }
        assert!(all.iter().all(|&s| s == all[0]), "{all:?}");
    }
    // Grouped, three banks: no count, the groups' counts and sums all
    // masked words, whatever matched.
    let g = grouped("min_matched = 0", 3);
    let mut all = Vec::new();
    for ranges in [[0..40, 10..60, 5..50], [0..40, 100..140, 200..240]] {
        let out = simulate(&g, &grouped_inputs(3, &ranges), &mut os_rng()).unwrap();
        let d = delivery(&out);
        assert_eq!((d.count, d.sums.len()), (None, 3));
        all.extend(sizes(d, &g));
    }
    assert!(all.iter().all(|&s| s == all[0]), "{all:?}");
}

/// Under DP the count is drawn once: every unmasker sees `m + z`, and the
/// released count is that same `m + z` less the public shift, so the count
/// spends its epsilon once (three parties: three unmaskers).
#[test]
fn dp_count_is_one_draw_seen_by_every_unmasker() {
    let text = "name = \"p\"\nrecipient = \"bank-c\"\n[parties.bank-a]\nsql = \"s\"\n[parties.bank-b]\nsql = \"s\"\n\
                [parties.bank-c]\nsql = \"s\"\n[output]\naggregates = [\"count\", \"sum(bank-a.g)\", \"sum(bank-b.g)\", \"sum(bank-c.g)\"]\n\
                [privacy]\nmin_matched = 0\nepsilon = 0.7\n[privacy.bounds]\n\"bank-a.g\" = 9\n\"bank-b.g\" = 9\n\"bank-c.g\" = 9\n";
    let a = Analysis::parse(text).unwrap();
    let shift = a.privacy.dp.as_ref().unwrap().dummy_shift() as i64;
    let rows = |r: std::ops::Range<u32>| -> Vec<Row> {
        r.map(|i| Row::new(key(&format!("k{i}")), vec![1]))
            .collect()
    };
    let inputs = BTreeMap::from([
        ("bank-a".to_string(), rows(0..40)),
        ("bank-b".to_string(), rows(10..50)),
        ("bank-c".to_string(), rows(20..60)),
    ]);
    for _ in 0..10 {
        let out = simulate(&a, &inputs, &mut os_rng()).unwrap();
        let seen: Vec<i64> = out
            .transcript
            .received
            .iter()
            .flatten()
            .filter_map(|m| match m {
                Inbound::MaskSum(r) => Some(r.positions.count() as i64),
                _ => None,
            })
            .collect();
        assert_eq!(seen.len(), 3);
        let released = out.release.get("count").unwrap();
        for s in seen {
            assert_eq!(s - shift, released, "an unmasker saw another draw");
        }
        assert_eq!(out.matched, 20);
    }
}

/// A negative noisy count is a valid DP release when `min_matched = 0`.
#[test]
fn negative_noisy_count_is_released_with_min_matched_zero() {
    let a = two_party(
        "bank-b",
        "epsilon = 0.05\n[privacy.bounds]\n\"bank-a.g\" = 1\n\"bank-b.f\" = 1",
    );
    let inputs = BTreeMap::from([
        ("bank-a".to_string(), vec![Row::new(key("x"), vec![1])]),
        ("bank-b".to_string(), vec![Row::new(key("y"), vec![1])]),
    ]);
    let mut negative = 0;
    for _ in 0..40 {
        let out = simulate(&a, &inputs, &mut os_rng()).expect("never aborts");
        negative += usize::from(out.release.get("count").unwrap() < 0);
    }
    assert!(
        negative > 0,
        "with m = 0 about half the noisy counts are negative"
    );
}

/// The shift that sizes the dummy rows follows the epsilon the sampler
/// really uses (rounded down to 1e-6), and meets its delta.
#[test]
fn dummy_shift_uses_the_rounded_epsilon() {
    let a = two_party(
        "bank-b",
        "epsilon = 0.2000009\n[privacy.bounds]\n\"bank-a.g\" = 1\n\"bank-b.f\" = 1",
    );
    let dp = a.privacy.dp.as_ref().unwrap();
    assert_eq!(dp.epsilon_micro(), 200_000);
    let s = dp.dummy_shift();
    assert!((-(0.2 * s as f64)).exp() <= 1e-9);
    assert!((-(0.2 * (s - 1) as f64)).exp() > 1e-9);
    assert_eq!(s, 104); // ceil(ln(1e9) / 0.2) = ceil(103.6)
}

#[test]
fn oversized_padding_is_refused() {
    let text = |m: u64| {
        format!(
            "name = \"p\"\nrecipient = \"bank-b\"\n[parties.bank-a]\nsql = \"s\"\n[parties.bank-b]\nsql = \"s\"\n\
             [output]\naggregates = [\"count\"]\n[privacy]\npad_to_multiple = {m}\n"
        )
    };
    assert!(Analysis::parse(&text(1 << 20)).is_ok());
    assert_eq!(
        Analysis::parse(&text((1 << 20) + 1)).unwrap_err(),
        cleanroom::AnalysisError::BadPadding
    );
}

// ------------------------------------------------------------ grouped results

fn grouped(privacy: &str, n: usize) -> Analysis {
    let mut t = "name = \"g\"\nrecipient = \"bank-a\"\n".to_string();
    let mut aggs = vec!["\"count\"".to_string()];
    for i in 0..n {
        let p = format!("bank-{}", (b'a' + i as u8) as char);
        t += &format!("[parties.{p}]\nsql = \"s\"\n");
        aggs.push(format!("\"sum({p}.v)\""));
    }
    t += &format!(
        "[output]\naggregates = [{}]\ngroup_by = \"bank-b.band\"\ngroups = [\"lo\", \"mid\", \"hi\"]\n[privacy]\n{privacy}\n",
        aggs.join(", ")
    );
    Analysis::parse(&t).unwrap()
}

/// Keys `k0..k59`: bank-b puts key i in group i % 3, every party's feature v
/// is a function of the key.
fn grouped_inputs(n: usize, ranges: &[std::ops::Range<u32>]) -> BTreeMap<String, Vec<Row>> {
    (0..n)
        .map(|i| {
            let p = format!("bank-{}", (b'a' + i as u8) as char);
            let rows = ranges[i]
                .clone()
                .map(|k| Row {
                    key: key(&format!("k{k}")),
                    features: vec![(k as u64 + 1) * (i as u64 + 1)],
                    group: (i == 1).then_some(k % 3),
                })
                .collect();
            (p, rows)
        })
        .collect()
}

fn plaintext_groups(n: usize, ranges: &[std::ops::Range<u32>]) -> BTreeMap<(String, String), i64> {
    let labels = ["lo", "mid", "hi"];
    let mut out = BTreeMap::new();
    for l in labels {
        out.insert((l.to_string(), "count".to_string()), 0);
        for i in 0..n {
            let p = format!("bank-{}", (b'a' + i as u8) as char);
            out.insert((l.to_string(), format!("sum({p}.v)")), 0);
        }
    }
    for k in 0..100u32 {
        if !ranges.iter().all(|r| r.contains(&k)) {
            continue;
        }
        let l = labels[(k % 3) as usize].to_string();
        *out.get_mut(&(l.clone(), "count".to_string())).unwrap() += 1;
        for i in 0..n {
            let p = format!("bank-{}", (b'a' + i as u8) as char);
            *out.get_mut(&(l.clone(), format!("sum({p}.v)"))).unwrap() +=
                ((k as u64 + 1) * (i as u64 + 1)) as i64;
        }
    }
    out
}

fn released_groups(out: &cleanroom::protocol::Release) -> BTreeMap<(String, String), i64> {
    out.rows
        .iter()
        .flat_map(|r| {
            r.values.iter().map(move |v| {
                (
                    (r.group.clone().unwrap_or_default(), v.aggregate.clone()),
                    v.value,
                )
            })
        })
        .collect()
}

#[test]
fn grouped_results_equal_plaintext_group_by() {
    for n in [2, 3] {
        let ranges = [0..40, 10..60, 5..50];
        let a = grouped("min_matched = 0", n);
        let out = simulate(&a, &grouped_inputs(n, &ranges), &mut os_rng()).unwrap();
        assert_eq!(out.release.group_by.as_deref(), Some("bank-b.band"));
        assert_eq!(out.release.rows.len(), 3);
        assert_eq!(
            released_groups(&out.release),
            plaintext_groups(n, &ranges[..n])
        );
        // The coordinator sees one match per key, not one per group copy.
        let want: u64 = plaintext_groups(n, &ranges[..n])
            .iter()
            .filter(|((_, a), _)| a == "count")
            .map(|(_, v)| *v as u64)
            .sum();
        assert_eq!(out.matched, want);
    }
}

/// The grouping party's points carry the group, so a key it returns in two
/// groups gives two different points; it must still be refused as a
/// duplicate (else its partner's row would be counted in both groups while
/// the budget charges it once).
#[test]
fn grouping_party_duplicate_key_in_two_groups_is_refused() {
    let a = grouped("min_matched = 0", 2);
    let mut inp = grouped_inputs(2, &[0..10, 0..10]);
    let rows = inp.get_mut("bank-b").unwrap();
    let mut dup = rows[0].clone();
    dup.group = Some((dup.group.unwrap() + 1) % 3);
    rows.push(dup);
    let err = simulate(&a, &inp, &mut os_rng()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::DuplicateKey { ref party } if party == "bank-b"),
        "{err}"
    );
}

/// A non-grouping party sends each key once per group (the copies side by
/// side in its list); a key it returns twice is still refused, under either
/// matching protocol (the duplicate check reads each key's first copy).
#[test]
fn non_grouping_party_duplicate_key_is_refused_under_both_protocols() {
    for psi in ["ecdh-ring", "keyed-prf"] {
        let a = grouped(&format!("min_matched = 0\n[protocol]\npsi = \"{psi}\""), 2);
        assert!(
            simulate(&a, &grouped_inputs(2, &[0..10, 0..10]), &mut os_rng()).is_ok(),
            "{psi}"
        );
        let mut inp = grouped_inputs(2, &[0..10, 0..10]);
        let rows = inp.get_mut("bank-a").unwrap();
        let mut dup = rows[3].clone();
        dup.features = vec![99];
        rows.push(dup);
        let err = simulate(&a, &inp, &mut os_rng()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::DuplicateKey { ref party } if party == "bank-a"),
            "{psi}: {err}"
        );
    }
}

#[test]
fn small_groups_are_suppressed_and_the_others_released() {
    // Keys 0..8 matched: groups lo {0,3,6}, mid {1,4,7}, hi {2,5}.
    let ranges = [0..8, 0..8];
    let a = grouped("min_matched = 3", 2);
    let out = simulate(&a, &grouped_inputs(2, &ranges), &mut os_rng()).unwrap();
    let hi = out.release.group("hi").unwrap();
    assert!(hi.suppressed && hi.values.is_empty());
    let lo = out.release.group("lo").unwrap();
    assert!(!lo.suppressed);
    assert_eq!(lo.get("count"), Some(3));
    assert_eq!(lo.get("sum(bank-b.v)"), Some((1 + 4 + 7) * 2));
    // Below the threshold in total: nothing at all.
    let a = grouped("min_matched = 9", 2);
    assert!(matches!(
        simulate(&a, &grouped_inputs(2, &ranges), &mut os_rng()),
        Err(ProtocolError::TooFewMatches)
    ));
}

/// Every unmasker saw the total noisy count: the sum of the released group
/// counts plus the public shifts (a post-processing of the release).
fn assert_unmaskers_see_released_counts(out: &cleanroom::protocol::SimulationOutcome, shift: i64) {
    let counts: i64 = out
        .release
        .rows
        .iter()
        .map(|r| r.get("count").unwrap())
        .sum();
    let groups = out.release.rows.len() as i64;
    for m in out.transcript.received.iter().flatten() {
        if let Inbound::MaskSum(r) = m {
            assert_eq!(r.positions.count() as i64, counts + groups * shift);
        }
    }
}

#[test]
fn grouped_dp_counts_hide_in_one_draw_per_group() {
    // A huge epsilon: noise is zero with overwhelming probability, so the
    // values are exact through the per-group dummies.
    let ranges = [0..40, 10..60];
    let a = grouped(
        "min_matched = 0\nepsilon = 1000000.0\n[privacy.bounds]\n\"bank-a.v\" = 1000\n\"bank-b.v\" = 1000",
        2,
    );
    let dp = a.privacy.dp.as_ref().unwrap();
    let shift = dp.dummy_shift() as i64;
    let out = simulate(&a, &grouped_inputs(2, &ranges), &mut os_rng()).unwrap();
    assert_eq!(released_groups(&out.release), plaintext_groups(2, &ranges));
    assert_unmaskers_see_released_counts(&out, shift);
    // A real epsilon: per-group counts are noisy but sum to what the
    // unmaskers saw, less the shifts.
    let a = grouped(
        "min_matched = 0\nepsilon = 0.5\n[privacy.bounds]\n\"bank-a.v\" = 1000\n\"bank-b.v\" = 1000",
        2,
    );
    let shift = a.privacy.dp.as_ref().unwrap().dummy_shift() as i64;
    let out = simulate(&a, &grouped_inputs(2, &ranges), &mut os_rng()).unwrap();
    assert_unmaskers_see_released_counts(&out, shift);
}

/// The recipient receives the count only when the analysis releases it.
#[test]
fn the_count_goes_to_the_recipient_only_when_released() {
    let a = Analysis::parse(
        "name = \"p\"\nrecipient = \"bank-b\"\n[parties.bank-a]\nsql = \"s\"\n[parties.bank-b]\nsql = \"s\"\n\
         [output]\naggregates = [\"sum(bank-a.g)\"]\n[privacy]\nmin_matched = 1\n",
    )
    .unwrap();
    let rows = |r: std::ops::Range<u32>, f: Vec<u64>| -> Vec<Row> {
        r.map(|i| Row::new(key(&format!("k{i}")), f.clone()))
            .collect()
    };
    let inputs = BTreeMap::from([
        ("bank-a".to_string(), rows(0..10, vec![2])),
        ("bank-b".to_string(), rows(5..15, vec![])),
    ]);
    let out = simulate(&a, &inputs, &mut os_rng()).unwrap();
    assert_eq!(out.release.get("sum(bank-a.g)"), Some(10));
    assert_eq!(out.release.get("count"), None);
    let Some(Inbound::Deliver(d)) = out.transcript.received[1].last() else {
        panic!("the recipient receives a delivery last");
    };
    assert_eq!(d.count, None);
}

#[test]
fn a_single_group_is_refused() {
    let e = Analysis::parse(
        "name = \"g\"\nrecipient = \"bank-a\"\n[parties.bank-a]\nsql = \"s\"\n[parties.bank-b]\nsql = \"s\"\n\
         [output]\naggregates = [\"count\"]\ngroup_by = \"bank-b.band\"\ngroups = [\"all\"]\n",
    )
    .unwrap_err();
    assert!(matches!(e, cleanroom::AnalysisError::BadGroups(_)), "{e}");
}
