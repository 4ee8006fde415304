//! Steps 4–7 on the coordinator: matching, the release threshold, the one
//! noise draw that hides the count, sums of masked rows, DP noise added to
//! the still-masked sums, and the one-time pads that keep the recipient from
//! seeing any list's masked sum alone. The coordinator never holds an
//! unmasked aggregate, nor a noise-free one under DP.

use rand::CryptoRng;

use super::{FinalList, Layout, MaskSumRequest, MaskedList, ProtocolError, match_finals};
use crate::analysis::{Aggregate, Analysis};
use crate::positions::Positions;

/// What the coordinator has decided after matching.
///
/// The coordinator knows everything here (its own randomness, and the exact
/// match count, as the leakage table says); it sends `positions[i]` and
/// `pads[i]` to the unmasker of list `i` and `sums` and `count` to the
/// recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePlan {
    /// Exact number of matched keys (known to the coordinator only).
    pub matched: u64,
    /// Per list: matched positions plus, under DP, some dummy positions.
    pub positions: Vec<Positions>,
    /// Per list: the one-time pad `r_i`, uniform, one word per masked slot
    /// (empty for lists without features).
    pub pads: Vec<Vec<u64>>,
    /// Per list: `Y_i + noise + r_i`, the masked sums over `positions`, noisy
    /// under DP, padded.
    pub sums: Vec<Vec<u64>>,
    /// Count to release (`m`, or under DP `m + z - shift`); `None` for
    /// grouped results, whose counts are masked sums, and when the analysis
    /// does not release the count.
    pub count: Option<i64>,
}

impl ReleasePlan {
    /// The step-5 request for list `owner` of `list_len` rows; under
    /// keyed-prf with the owner's `length_tag` for the unmasker (empty under
    /// ecdh-ring).
    pub fn mask_sum_request(
        &self,
        owner: usize,
        list_len: u64,
        length_tag: Vec<u8>,
    ) -> MaskSumRequest {
        MaskSumRequest {
            owner,
            list_len,
            length_tag,
            positions: self.positions[owner].clone(),
            pad: self.pads[owner].clone(),
        }
    }

    /// The step-6 delivery, given the sealed mask sums collected in step 5.
    pub fn delivery(&self, sealed: Vec<Option<Vec<u8>>>) -> Delivery {
        Delivery {
            count: self.count,
            sums: self.sums.clone(),
            sealed,
        }
    }
}

/// Bytes of the sealed mask sum that the unmasker `unmasker` returns for a
/// list of `width` masked slots when `recipient` is the analysis's
/// recipient: none for a list without features or where the recipient is
/// the unmasker (it keeps the sum), else the sealed words. Fixed by the
/// analysis, so the coordinator refuses any other length before relaying it
/// and the delivery's size says nothing of the release.
pub fn sealed_mask_sum_len(width: usize, unmasker: usize, recipient: usize) -> usize {
    if width == 0 || unmasker == recipient {
        0
    } else {
        crate::share::sealed_len(width)
    }
}

/// What the coordinator delivers to the recipient's node (step 6).
///
/// The recipient learns the released numbers and nothing else: every sum is
/// padded with an `r_i` that also pads the matching mask sum, so each value
/// on its own is uniform and only their difference (the release) carries
/// information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Count to release (noisy under DP); `None` for grouped results and
    /// when the analysis does not release the count.
    pub count: Option<i64>,
    /// Per list (ring order): `Y_i + noise + r_i`.
    pub sums: Vec<Vec<u64>>,
    /// Per list: `M_i + r_i` sealed for the recipient by the list's unmasker
    /// (`None` where the recipient is the unmasker or the list has no
    /// features).
    pub sealed: Vec<Option<Vec<u8>>>,
}

/// Steps 4–7 on the coordinator, shared by the in-memory and the gRPC run:
/// matches the final lists (truncated points or tags), refuses to go on below
/// `min_matched`, adds DP dummy positions (one draw per group, shared by all
/// lists), sums the masked rows, adds noise and pads. `lists[i]` is what
/// the coordinator kept of list `i` (masked values, dummies), `finals[i]`
/// the list's final elements (after the whole blinding ring under
/// ecdh-ring; the owner's tags under keyed-prf).
pub fn plan_release<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    lists: &[MaskedList],
    finals: &[FinalList],
    rng: &mut R,
) -> Result<ReleasePlan, ProtocolError> {
    let layout = Layout::new(analysis);
    let names = analysis.party_names();
    for (i, l) in lists.iter().enumerate() {
        if l.width != layout.row_width(i) || l.values.len() as u64 != l.len * l.width as u64 {
            return Err(ProtocolError::Violation(format!(
                "list of {} does not have the analysis's layout",
                names[i]
            )));
        }
    }
    let final_len = super::encode::final_len(analysis.psi);
    if finals.len() != lists.len() {
        return Err(ProtocolError::Violation(
            "not every list has a final list".into(),
        ));
    }
    for (i, (f, l)) in finals.iter().zip(lists).enumerate() {
        if f.rows() != l.len || f.point_len() != final_len {
            return Err(ProtocolError::Violation(format!(
                "final list of {} does not have one {final_len}-byte element per row",
                names[i]
            )));
        }
    }
    let matches = match_finals(finals, &names)?;
    let m = matches.count;
    let min = analysis.privacy.min_matched;
    let dp = analysis.privacy.dp.as_ref();
    // Without DP the exact count is the release condition (for grouped
    // results a necessary one: the recipient thresholds every group).
    if dp.is_none() && m < min {
        return Err(ProtocolError::TooFewMatches);
    }
    let zs = draw_count_noise(analysis, rng)?;
    let mut positions = matches.positions;
    for (i, (pos, list)) in positions.iter_mut().zip(lists).enumerate() {
        add_dummy_positions(analysis, &layout, i, pos, &list.dummies, &zs, rng)?;
    }
    let mut sums = lists
        .iter()
        .zip(&positions)
        .map(|(l, pos)| sum_masked(&l.values, l.width, pos))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dp) = dp {
        for a in &analysis.aggregates {
            if let Aggregate::Sum { party, column } = a {
                let (p, f) = analysis
                    .sum_slot(party, column)
                    .ok_or_else(|| ProtocolError::UnknownParty(party.clone()))?;
                let noise = dp.noise(analysis.bound(party, column).unwrap_or(1).max(1))?;
                for g in 0..layout.groups() {
                    let slot = layout.feature_slot(p, f, g);
                    sums[p][slot] = sums[p][slot].wrapping_add(noise.sample(rng) as u64);
                }
            }
        }
    }
    let count = if layout.is_grouped() {
        None
    } else {
        // The one draw of step 7: the unmaskers see m + z, the recipient
        // m + z - shift, so the count costs its epsilon once.
        let count = match (dp, zs.first()) {
            (Some(dp), Some(&z)) => m as i64 + z as i64 - dp.dummy_shift() as i64,
            _ => m as i64,
        };
        if min > 0 && count < min as i64 {
            return Err(ProtocolError::TooFewMatches);
        }
        // The recipient gets the count only when the analysis releases it.
        analysis
            .aggregates
            .contains(&Aggregate::Count)
            .then_some(count)
    };
    let pads: Vec<Vec<u64>> = sums
        .iter()
        .map(|s| s.iter().map(|_| rng.next_u64()).collect())
        .collect();
    for (s, r) in sums.iter_mut().zip(&pads) {
        crate::share::add_assign(s, r);
    }
    Ok(ReleasePlan {
        matched: m,
        positions,
        pads,
        sums,
        count,
    })
}

/// `Y = Σ_{j ∈ positions} y_j mod 2^64` over a flat masked matrix of
/// `positions.list_len()` rows.
pub fn sum_masked(
    masked: &[u64],
    width: usize,
    positions: &Positions,
) -> Result<Vec<u64>, ProtocolError> {
    let mut sum = vec![0u64; width];
    if masked.len() as u64 != positions.list_len().saturating_mul(width as u64) {
        return Err(ProtocolError::Violation(
            "positions over another length than the masked list's".into(),
        ));
    }
    if width == 0 {
        return Ok(sum);
    }
    for p in positions.iter() {
        let row = &masked[p as usize * width..(p as usize + 1) * width];
        crate::share::add_assign(&mut sum, row);
    }
    Ok(sum)
}

/// Step 7's noise: under DP, one draw `z_g` per group from the discrete
/// Laplace of scale `1/ε` shifted by [`crate::analysis::DpSpec::dummy_shift`]
/// and truncated (by rejection) to `[0, 2·shift]`. Empty without DP.
pub fn draw_count_noise<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    rng: &mut R,
) -> Result<Vec<u64>, ProtocolError> {
    let Some(dp) = &analysis.privacy.dp else {
        return Ok(Vec::new());
    };
    let shift = dp.dummy_shift() as i64;
    let noise = crate::dp::Noise::laplace(dp.epsilon, 1)?;
    Ok((0..analysis.group_count())
        .map(|_| {
            loop {
                let z = shift + noise.sample(rng);
                if (0..=2 * shift).contains(&z) {
                    break z as u64;
                }
            }
        })
        .collect())
}

/// Step 7 (DP only): hides the match count from the unmasker of list `list`.
/// Adds dummy positions (zero features, or the group indicator at the
/// grouping party) to the matched positions: `zs[g]` from the
/// grouping party's block `g`, `Σ zs` from the whole pool of any other list.
/// Every unmasker then sees `m + Σ zs`; the grouping party's indicator sums
/// become `m_g + z_g`. Without DP, does nothing (and expects no dummies).
pub fn add_dummy_positions<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    layout: &Layout,
    list: usize,
    positions: &mut Positions,
    dummies: &[u64],
    zs: &[u64],
    rng: &mut R,
) -> Result<(), ProtocolError> {
    let expected = analysis.dp_dummy_rows() as usize;
    if dummies.len() != expected {
        return Err(ProtocolError::Violation(format!(
            "list announces {} dummy rows, the analysis requires {expected}",
            dummies.len()
        )));
    }
    if expected == 0 {
        return Ok(());
    }
    if dummies.iter().any(|&d| positions.contains(d)) {
        return Err(ProtocolError::Violation("a dummy row matched".into()));
    }
    let block = expected / layout.groups();
    let mut pick = |pool: &[u64], z: usize| {
        let mut pool = pool.to_vec();
        let (chosen, _) = rand::seq::SliceRandom::partial_shuffle(pool.as_mut_slice(), rng, z);
        for &d in chosen.iter() {
            if !positions.insert(d)? {
                return Err(ProtocolError::Violation("dummy rows repeat".into()));
            }
        }
        Ok(())
    };
    if layout.count_slot(0).is_some_and(|(p, _)| p == list) {
        for (g, &z) in zs.iter().enumerate() {
            pick(&dummies[g * block..(g + 1) * block], z as usize)?;
        }
    } else {
        pick(dummies, zs.iter().sum::<u64>() as usize)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn analysis(privacy: &str) -> Analysis {
        Analysis::parse(&format!(
            "name = \"t\"\nrecipient = \"a\"\n[parties.a]\nsql = \"s\"\n[parties.b]\nsql = \"s\"\n\
             [output]\naggregates = [\"count\"]\n[privacy]\n{privacy}\n"
        ))
        .unwrap()
    }

    #[test]
    fn dummy_positions_hide_the_count() {
        let a = analysis("epsilon = 0.5");
        let layout = Layout::new(&a);
        let shift = a.privacy.dp.as_ref().unwrap().dummy_shift();
        assert_eq!(shift, 42); // ceil(ln(1e9) / 0.5)
        let dummies: Vec<u64> = (100..100 + 2 * shift).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut total = 0u64;
        let len = 100 + 2 * shift;
        for _ in 0..2000 {
            let mut pos = Positions::from_ascending(len, &[1, 5, 7]).unwrap();
            let zs = draw_count_noise(&a, &mut rng).unwrap();
            add_dummy_positions(&a, &layout, 0, &mut pos, &dummies, &zs, &mut rng).unwrap();
            let z = pos.count() - 3;
            assert_eq!(z, zs[0]);
            assert!(z <= 2 * shift);
            let all: Vec<u64> = pos.iter().collect();
            assert_eq!(all[..3], [1, 5, 7]);
            assert!(all[3..].iter().all(|p| dummies.contains(p)));
            total += z;
        }
        let mean = total as f64 / 2000.0;
        assert!((mean - shift as f64).abs() < 0.5, "mean {mean}");
    }

    #[test]
    fn dummy_lists_are_checked() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = analysis("epsilon = 1.0");
        let layout = Layout::new(&a);
        let zs = draw_count_noise(&a, &mut rng).unwrap();
        let len = 10 * a.dp_dummy_rows();
        let set = |p: &[u64]| Positions::from_ascending(len, p).unwrap();
        assert!(matches!(
            add_dummy_positions(&a, &layout, 0, &mut set(&[1]), &[2, 3], &zs, &mut rng),
            Err(ProtocolError::Violation(_))
        ));
        let dummies: Vec<u64> = (0..a.dp_dummy_rows()).collect();
        assert!(matches!(
            add_dummy_positions(&a, &layout, 0, &mut set(&[0]), &dummies, &zs, &mut rng),
            Err(ProtocolError::Violation(_))
        ));
        // Dummies outside the list, or repeated.
        let outside: Vec<u64> = (len..len + a.dp_dummy_rows()).collect();
        let all_picked = vec![a.dp_dummy_rows(); zs.len()];
        assert!(matches!(
            add_dummy_positions(
                &a,
                &layout,
                0,
                &mut set(&[]),
                &outside,
                &all_picked,
                &mut rng
            ),
            Err(ProtocolError::Positions(_))
        ));
        let repeated = vec![1; a.dp_dummy_rows() as usize];
        assert!(matches!(
            add_dummy_positions(
                &a,
                &layout,
                0,
                &mut set(&[]),
                &repeated,
                &all_picked,
                &mut rng
            ),
            Err(ProtocolError::Violation(_))
        ));
        let plain = analysis("min_matched = 1");
        let mut pos = set(&[4]);
        add_dummy_positions(
            &plain,
            &Layout::new(&plain),
            0,
            &mut pos,
            &[],
            &[],
            &mut rng,
        )
        .unwrap();
        assert_eq!(pos, set(&[4]));
    }
}
