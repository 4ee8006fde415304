//! Steps 5 and 6 on the coordinator: sums of masked rows, the release
//! threshold, and DP noise added to the still-masked sums (so the coordinator
//! never knows a noise-free aggregate, nor an unmasked one).

use rand::CryptoRng;

use super::{ProtocolError, party_index};
use crate::analysis::{Aggregate, Analysis};
use crate::share::check_positions;

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
                let p = party_index(analysis, party)?;
                let f = analysis
                    .features(party)
                    .iter()
                    .position(|c| c == column)
                    .expect("every summed column is a feature");
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
