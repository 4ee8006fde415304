//! Exact discrete differential-privacy noise.
//!
//! Samplers from Canonne, Kamath and Steinke, "The Discrete Gaussian for
//! Differential Privacy" (NeurIPS 2020): every step uses integer or rational
//! arithmetic on uniformly random integers, so there is no floating-point
//! leakage (unlike textbook Laplace noise on doubles).
//!
//! Parameters are rationals. A user-facing `epsilon` (a decimal in the
//! analysis file) is turned into a rational by rounding **down** to
//! [`EPSILON_DENOMINATOR`] (so the noise is never smaller than asked), and a
//! Gaussian variance is rounded **up** to a multiple of `1 / SIGMA2_DENOMINATOR`.

use rand::Rng;
use thiserror::Error;

use crate::session::uniform_below;

/// Resolution of epsilon: epsilon is rounded down to a multiple of 1e-6.
pub const EPSILON_DENOMINATOR: u64 = 1_000_000;
/// Resolution of a small Gaussian variance: rounded up to a multiple of 1e-3
/// (variances of 1e6 and more are rounded up to an integer).
pub const SIGMA2_DENOMINATOR: u64 = 1_000;
/// Largest Gaussian variance accepted (σ ≈ 2.7e8): beyond it, express the
/// feature in coarser units (dollars rather than cents).
pub const MAX_SIGMA2: u64 = 1 << 56;

/// Errors for noise parameters.
#[derive(Debug, Error, PartialEq)]
pub enum DpError {
    /// Epsilon must be finite and at least 1e-6.
    #[error("epsilon must be a finite number >= 1e-6, got {0}")]
    BadEpsilon(f64),
    /// Delta must be in (0, 1).
    #[error("delta must be in (0, 1), got {0}")]
    BadDelta(f64),
    /// Sensitivity must be at least 1.
    #[error("sensitivity must be >= 1")]
    BadSensitivity,
    /// A parameter is too large for exact 128-bit arithmetic.
    #[error("noise scale too large for exact arithmetic (use coarser units for this feature)")]
    Overflow,
}

/// A noise mechanism with its exact parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    /// Discrete Laplace with scale `num / den`: `P(x) ∝ exp(-|x| den / num)`.
    Laplace {
        /// Scale numerator.
        num: u64,
        /// Scale denominator.
        den: u64,
    },
    /// Discrete Gaussian with variance parameter `sigma2_num / sigma2_den`.
    Gaussian {
        /// Variance numerator.
        sigma2_num: u64,
        /// Variance denominator.
        sigma2_den: u64,
    },
}

impl Noise {
    /// Discrete Laplace for `epsilon`-DP of a value with the given sensitivity
    /// (scale `sensitivity / epsilon`).
    pub fn laplace(epsilon: f64, sensitivity: u64) -> Result<Self, DpError> {
        let eps = epsilon_micro(epsilon)?;
        if sensitivity == 0 {
            return Err(DpError::BadSensitivity);
        }
        let num = sensitivity
            .checked_mul(EPSILON_DENOMINATOR)
            .ok_or(DpError::Overflow)?;
        Ok(Noise::Laplace { num, den: eps })
    }

    /// Discrete Gaussian giving `(epsilon, delta)`-DP for the given
    /// sensitivity, via `rho`-zCDP (CKS Thm. 4 and Prop. 1.4 of Bun–Steinke):
    /// `rho = (sqrt(ln(1/δ) + ε) - sqrt(ln(1/δ)))²`, `σ² = Δ² / (2 rho)`.
    pub fn gaussian(epsilon: f64, delta: f64, sensitivity: u64) -> Result<Self, DpError> {
        let eps = epsilon_micro(epsilon)? as f64 / EPSILON_DENOMINATOR as f64;
        if !(delta > 0.0 && delta < 1.0) {
            return Err(DpError::BadDelta(delta));
        }
        if sensitivity == 0 {
            return Err(DpError::BadSensitivity);
        }
        let l = (1.0 / delta).ln();
        let rho = ((l + eps).sqrt() - l.sqrt()).powi(2);
        let s = sensitivity as f64;
        // Round the variance up, with a little slack for float error in rho.
        let sigma2 = s * s / (2.0 * rho) * (1.0 + 1e-9);
        if !sigma2.is_finite() || sigma2 >= MAX_SIGMA2 as f64 {
            return Err(DpError::Overflow);
        }
        // Large variances are rounded up to an integer, small ones to 1e-3.
        let den = if sigma2 >= 1e6 { 1 } else { SIGMA2_DENOMINATOR };
        Ok(Noise::Gaussian {
            sigma2_num: ((sigma2 * den as f64).ceil() as u64).max(1),
            sigma2_den: den,
        })
    }

    /// Draws one noise value.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        match *self {
            Noise::Laplace { num, den } => sample_discrete_laplace(rng, num, den),
            Noise::Gaussian {
                sigma2_num,
                sigma2_den,
            } => sample_discrete_gaussian(rng, sigma2_num, sigma2_den),
        }
    }

    /// The variance of the distribution, for reports and tests (approximate
    /// for the Gaussian: `σ²`).
    pub fn variance(&self) -> f64 {
        match *self {
            Noise::Laplace { num, den } => {
                let p = (-(den as f64) / num as f64).exp();
                2.0 * p / (1.0 - p).powi(2)
            }
            Noise::Gaussian {
                sigma2_num,
                sigma2_den,
            } => sigma2_num as f64 / sigma2_den as f64,
        }
    }
}

/// Epsilon as the samplers use it: rounded down to a multiple of
/// `1 / EPSILON_DENOMINATOR`, in those units, so never more privacy loss than
/// asked — except that a value within 1e-12 below a multiple (float
/// representation error, as in `0.1 + 0.2`) counts as that multiple.
/// Rejects non-finite values, values below 1e-6 and above 1e6.
pub fn epsilon_micro(epsilon: f64) -> Result<u64, DpError> {
    if !epsilon.is_finite() || epsilon < 1.0 / EPSILON_DENOMINATOR as f64 || epsilon > 1e6 {
        return Err(DpError::BadEpsilon(epsilon));
    }
    // The product may land a hair below an integer (1e-6 * 1e6); round to
    // the nearest first when it is that close, then down.
    let scaled = epsilon * EPSILON_DENOMINATOR as f64;
    let near = scaled.round();
    let units = if (scaled - near).abs() < 1e-6 {
        near
    } else {
        scaled.floor()
    };
    Ok(units as u64)
}

/// Bernoulli(num / den), exactly. Requires `num <= den`, `den > 0`.
fn bernoulli<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    debug_assert!(num <= den && den > 0);
    if den <= u64::MAX as u128 {
        (uniform_below(rng, den as u64) as u128) < num
    } else {
        // Scale down exactly is impossible; draw a 128-bit uniform by rejection.
        loop {
            let x = ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128;
            let limit = u128::MAX - (u128::MAX % den);
            if x < limit {
                return x % den < num;
            }
        }
    }
}

/// Bernoulli(exp(-num / den)) for rational `num / den >= 0` (CKS Alg. 1).
fn bernoulli_exp<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    let mut num = num;
    // exp(-γ) = exp(-1)^floor(γ) * exp(-(γ - floor γ)).
    while num > den {
        if !bernoulli_exp_le1(rng, 1, 1) {
            return false;
        }
        num -= den;
    }
    bernoulli_exp_le1(rng, num, den)
}

/// Bernoulli(exp(-γ)) for γ = num/den in [0, 1].
fn bernoulli_exp_le1<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    let mut k: u128 = 1;
    loop {
        // A ~ Bernoulli(γ / k); stop at the first failure.
        if !bernoulli(rng, num, den * k) {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// Discrete Laplace with scale `num / den` (CKS Alg. 2 with `t = num`,
/// `s = den`): `P(x) ∝ exp(-|x| den / num)`.
pub fn sample_discrete_laplace<R: Rng + ?Sized>(rng: &mut R, num: u64, den: u64) -> i64 {
    assert!(
        num > 0 && den > 0,
        "discrete Laplace needs a positive scale"
    );
    let (t, s) = (num, den);
    loop {
        let u = uniform_below(rng, t);
        if !bernoulli_exp(rng, u as u128, t as u128) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp(rng, 1, 1) {
            v += 1;
        }
        let x = u as u128 + t as u128 * v as u128;
        let y = (x / s as u128) as i64;
        let negative = bernoulli(rng, 1, 2);
        if negative && y == 0 {
            continue;
        }
        return if negative { -y } else { y };
    }
}

/// Discrete Gaussian with variance parameter `σ² = num / den` (CKS Alg. 3).
pub fn sample_discrete_gaussian<R: Rng + ?Sized>(rng: &mut R, num: u64, den: u64) -> i64 {
    assert!(
        num > 0 && den > 0,
        "discrete Gaussian needs a positive variance"
    );
    assert!(num / den < MAX_SIGMA2, "variance above MAX_SIGMA2");
    // t = floor(σ) + 1, with σ = sqrt(num/den) computed exactly by integer sqrt.
    let t = (num / den).isqrt() + 1;
    // Fix t exactly: t - 1 = floor(sqrt(num/den)) means (t-1)² <= num/den < t².
    let t = fix_floor_sqrt(num, den, t - 1) + 1;
    let (num, den, t) = (num as u128, den as u128, t as u128);
    loop {
        let y = sample_discrete_laplace(rng, t as u64, 1);
        let abs = y.unsigned_abs() as u128;
        // γ = (|y| - σ²/t)² / (2σ²) = (|y| t den - num)² / (2 num t² den).
        // With σ² <= MAX_SIGMA2, g_den < 2^115; the numerator overflows only
        // for |y| beyond ~250 σ, which the Laplace proposal reaches with
        // probability below 2^-360 and which would be accepted with
        // probability below e^-30000: treating it as a rejection is exact up
        // to that (unobservable) event.
        let g_den = 2 * num * t * t * den;
        let Some(g_num) = abs
            .checked_mul(t * den)
            .map(|v| v.abs_diff(num))
            .and_then(|d| d.checked_mul(d))
        else {
            continue;
        };
        if bernoulli_exp(rng, g_num, g_den) {
            return y;
        }
    }
}

/// Largest `r` with `r² <= num/den`, starting from a guess.
fn fix_floor_sqrt(num: u64, den: u64, guess: u64) -> u64 {
    let le = |r: u64| (r as u128) * (r as u128) * (den as u128) <= num as u128;
    let mut r = guess;
    while !le(r) {
        r -= 1;
    }
    while le(r + 1) {
        r += 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn moments(samples: &[i64]) -> (f64, f64) {
        let n = samples.len() as f64;
        let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = samples
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        (mean, var)
    }

    /// Empirical mean and variance within tolerance of theory, over many
    /// draws from a fixed seed (a statistical check, deterministic).
    #[test]
    fn laplace_moments_match_theory() {
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        for (eps, sens) in [(1.0, 1), (0.5, 1), (0.1, 3), (2.0, 10)] {
            let noise = Noise::laplace(eps, sens).unwrap();
            let xs: Vec<i64> = (0..40_000).map(|_| noise.sample(&mut rng)).collect();
            let (mean, var) = moments(&xs);
            let theory = noise.variance();
            let se_mean = (theory / xs.len() as f64).sqrt();
            assert!(mean.abs() < 5.0 * se_mean, "eps {eps}: mean {mean}");
            assert!(
                (var / theory - 1.0).abs() < 0.06,
                "eps {eps}: var {var} vs {theory}"
            );
        }
    }

    #[test]
    fn laplace_distribution_shape() {
        // P(0) = (1-p)/(1+p) with p = exp(-1/scale); scale 1 → 0.4621.
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let xs: Vec<i64> = (0..50_000)
            .map(|_| sample_discrete_laplace(&mut rng, 1, 1))
            .collect();
        let p = (-1.0f64).exp();
        let p0 = xs.iter().filter(|&&x| x == 0).count() as f64 / xs.len() as f64;
        assert!((p0 - (1.0 - p) / (1.0 + p)).abs() < 0.01, "P(0) = {p0}");
        let pos = xs.iter().filter(|&&x| x > 0).count() as f64;
        let neg = xs.iter().filter(|&&x| x < 0).count() as f64;
        assert!((pos / neg - 1.0).abs() < 0.05);
    }

    #[test]
    fn gaussian_moments_match_theory() {
        let mut rng = ChaCha20Rng::seed_from_u64(43);
        for sigma2 in [1u64, 10, 250] {
            let xs: Vec<i64> = (0..40_000)
                .map(|_| sample_discrete_gaussian(&mut rng, sigma2 * 1000, 1000))
                .collect();
            let (mean, var) = moments(&xs);
            let se_mean = (sigma2 as f64 / xs.len() as f64).sqrt();
            assert!(mean.abs() < 5.0 * se_mean, "σ² {sigma2}: mean {mean}");
            // For σ >= 1 the discrete Gaussian's variance is within 1e-3 of σ².
            assert!(
                (var / sigma2 as f64 - 1.0).abs() < 0.06,
                "σ² {sigma2}: var {var}"
            );
        }
    }

    #[test]
    fn parameters_are_validated() {
        assert_eq!(Noise::laplace(0.0, 1), Err(DpError::BadEpsilon(0.0)));
        assert_eq!(Noise::laplace(-1.0, 1), Err(DpError::BadEpsilon(-1.0)));
        assert!(matches!(
            Noise::laplace(f64::NAN, 1),
            Err(DpError::BadEpsilon(_))
        ));
        assert_eq!(Noise::laplace(1.0, 0), Err(DpError::BadSensitivity));
        assert_eq!(Noise::gaussian(1.0, 0.0, 1), Err(DpError::BadDelta(0.0)));
        assert_eq!(
            Noise::laplace(0.5, 2).unwrap(),
            Noise::Laplace {
                num: 2_000_000,
                den: 500_000
            }
        );
        // ε = 1, δ = 1e-6: ρ ≈ 0.017469, σ² = 1/(2ρ) ≈ 28.62.
        let Noise::Gaussian {
            sigma2_num,
            sigma2_den,
        } = Noise::gaussian(1.0, 1e-6, 1).unwrap()
        else {
            panic!()
        };
        let s2 = sigma2_num as f64 / sigma2_den as f64;
        assert!((28.62..28.63).contains(&s2), "σ² = {s2}");
    }
}
