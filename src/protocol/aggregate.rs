//! Steps 5 and 6 on the coordinator: sums of masked rows, the release
//! threshold, and DP noise added to the still-masked sums (so the coordinator
//! never knows a noise-free aggregate, nor an unmasked one).

use rand::CryptoRng;

use super::{PreparedList, ProtocolError, match_lists};
use crate::analysis::{Aggregate, Analysis};
use crate::psi::TRUNCATED_LEN;
use crate::share::check_positions;

/// What the coordinator has decided after matching: which positions each
/// unmasker sums, the (noisy) masked sums and the count to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePlan {
    /// Exact number of matched keys (known to the coordinator only).
    pub matched: u64,
    /// Per list: matched positions plus, under DP, some dummy positions.
    pub positions: Vec<Vec<u64>>,
    /// Per list: masked sums over `positions` (noisy under DP).
    pub sums: Vec<Vec<u64>>,
    /// Count to release (noisy under DP).
    pub count: i64,
}

/// Steps 4–6 on the coordinator, shared by the in-memory and the gRPC run:
/// matches the final (truncated) lists, adds DP dummy positions (step 7),
/// sums the masked rows and applies the release policy and noise.
/// `lists[i]` is list `i` as its owner prepared it, `finals[i]` the same
/// list after the whole blinding ring.
pub fn plan_release<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    lists: &[PreparedList],
    finals: &[Vec<u8>],
    rng: &mut R,
) -> Result<ReleasePlan, ProtocolError> {
    let names = analysis.party_names();
    let refs: Vec<&[u8]> = finals.iter().map(Vec::as_slice).collect();
    let matches = match_lists(&refs, TRUNCATED_LEN, &names)?;
    let mut positions = matches.positions;
    for (pos, list) in positions.iter_mut().zip(lists) {
        add_dummy_positions(analysis, pos, &list.dummies, rng)?;
    }
    let mut sums = lists
        .iter()
        .zip(&positions)
        .map(|(l, pos)| sum_masked(&l.masked, l.width, pos))
        .collect::<Result<Vec<_>, _>>()?;
    let count = noisy_release(analysis, matches.count, &mut sums, rng)?;
    Ok(ReleasePlan {
        matched: matches.count,
        positions,
        sums,
        count,
    })
}

/// What the coordinator delivers to the recipient's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Matched count to release (noisy under DP).
    pub count: i64,
    /// Per list (ring order): masked sums of the matched rows (noisy under DP).
    pub sums: Vec<Vec<u64>>,
    /// Per list: the mask sum sealed for the recipient by the list's
    /// unmasker (`None` where the recipient is the unmasker or the list has no
    /// features).
    pub sealed: Vec<Option<Vec<u8>>>,
}

/// `Y = Σ_{j ∈ positions} y_j mod 2^64` over a flat masked matrix.
pub fn sum_masked(
    masked: &[u64],
    width: usize,
    positions: &[u64],
) -> Result<Vec<u64>, ProtocolError> {
    let mut sum = vec![0u64; width];
    if width == 0 {
        return Ok(sum);
    }
    let len = (masked.len() / width) as u64;
    check_positions(positions, len)?;
    for &p in positions {
        let row = &masked[p as usize * width..(p as usize + 1) * width];
        crate::share::add_assign(&mut sum, row);
    }
    Ok(sum)
}

/// Applies the release policy to the matched count `m` and the masked sums
/// (`sums[i]` in the feature order of list `i`): under DP, adds noise to the
/// count (sensitivity 1) and to every summed feature (sensitivity = its
/// bound); then refuses when the (noisy) count is below `min_matched`.
/// Returns the count to release.
pub fn noisy_release<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    matched: u64,
    sums: &mut [Vec<u64>],
    rng: &mut R,
) -> Result<i64, ProtocolError> {
    let mut count = matched as i64;
    if let Some(dp) = &analysis.privacy.dp {
        count += dp.noise(1)?.sample(rng);
        for a in &analysis.aggregates {
            if let Aggregate::Sum { party, column } = a {
                let (p, f) = analysis
                    .sum_slot(party, column)
                    .ok_or_else(|| ProtocolError::UnknownParty(party.clone()))?;
                let bound = analysis.bound(party, column).unwrap_or(1).max(1);
                let noise = dp.noise(bound)?.sample(rng);
                sums[p][f] = sums[p][f].wrapping_add(noise as u64);
            }
        }
    }
    let min = analysis.privacy.min_matched;
    if count < min as i64 {
        return Err(ProtocolError::TooFewMatches {
            matched: count,
            min,
        });
    }
    Ok(count)
}

/// Step 7 (DP only): hides the match count from the unmasker of a list.
/// Draws `z` from a discrete Laplace of scale `1/ε` shifted by
/// [`crate::analysis::DpSpec::dummy_shift`] and truncated to `[0, 2·shift]`,
/// and appends `z` of the list's dummy positions (zero features) to the
/// matched positions, then sorts them. Sums are unchanged; the unmasker sees
/// `m + z`. Without DP, does nothing (and expects no dummies).
pub fn add_dummy_positions<R: CryptoRng + ?Sized>(
    analysis: &Analysis,
    positions: &mut Vec<u64>,
    dummies: &[u64],
    rng: &mut R,
) -> Result<(), ProtocolError> {
    let expected = analysis.dp_dummy_rows() as usize;
    if dummies.len() != expected {
        return Err(ProtocolError::Violation(format!(
            "list announces {} dummy rows, the analysis requires {expected}",
            dummies.len()
        )));
    }
    let Some(dp) = &analysis.privacy.dp else {
        return Ok(());
    };
    let shift = dp.dummy_shift() as i64;
    let noise = crate::dp::Noise::laplace(dp.epsilon, 1)?;
    let z = loop {
        let z = shift + noise.sample(rng);
        if (0..=2 * shift).contains(&z) {
            break z as usize;
        }
    };
    let matched: std::collections::HashSet<u64> = positions.iter().copied().collect();
    if dummies.iter().any(|d| matched.contains(d)) {
        return Err(ProtocolError::Violation("a dummy row matched".into()));
    }
    let mut pool = dummies.to_vec();
    let (chosen, _) = rand::seq::SliceRandom::partial_shuffle(pool.as_mut_slice(), rng, z);
    positions.extend_from_slice(chosen);
    positions.sort_unstable();
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
        let shift = a.privacy.dp.as_ref().unwrap().dummy_shift();
        assert_eq!(shift, 42); // ceil(ln(1e9) / 0.5)
        let dummies: Vec<u64> = (100..100 + 2 * shift).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut total = 0u64;
        for _ in 0..2000 {
            let mut pos = vec![1, 5, 7];
            add_dummy_positions(&a, &mut pos, &dummies, &mut rng).unwrap();
            let z = pos.len() as u64 - 3;
            assert!(z <= 2 * shift);
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            assert!(pos[3..].iter().all(|p| dummies.contains(p)));
            total += z;
        }
        let mean = total as f64 / 2000.0;
        assert!((mean - shift as f64).abs() < 0.5, "mean {mean}");
    }

    #[test]
    fn dummy_lists_are_checked() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = analysis("epsilon = 1.0");
        assert!(matches!(
            add_dummy_positions(&a, &mut vec![1], &[2, 3], &mut rng),
            Err(ProtocolError::Violation(_))
        ));
        let dummies: Vec<u64> = (0..a.dp_dummy_rows()).collect();
        assert!(matches!(
            add_dummy_positions(&a, &mut vec![0], &dummies, &mut rng),
            Err(ProtocolError::Violation(_))
        ));
        let plain = analysis("min_matched = 1");
        let mut pos = vec![4];
        add_dummy_positions(&plain, &mut pos, &[], &mut rng).unwrap();
        assert_eq!(pos, vec![4]);
    }
}
