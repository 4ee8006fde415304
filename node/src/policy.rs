//! Who may run what at this node: per authorized coordinator identity, a
//! privacy budget, a floor for `min_matched`, whether DP is required, and
//! which tables the catalog shows. Configured in the node config:
//!
//! ```toml
//! authorized_coordinators = ["coordinator"]
//! [policy.coordinator]          # one table per authorized identity (optional)
//! epsilon_budget = 10.0         # total epsilon over all runs (default: no cap)
//! delta_budget = 1e-6           # total delta over all runs (default: no cap)
//! min_matched_floor = 20        # refuse analyses with a lower min_matched (default 0)
//! require_dp = true             # refuse analyses without epsilon (default false)
//! max_epsilon = 1.0             # refuse analyses with a larger epsilon per number
//! catalog_tables = ["transfers"] # tables the catalog shows (default: all)
//! allowed_psi = ["ecdh-ring"]   # matching protocols it may run (default: both)
//! ```
//!
//! `allowed_psi` lets a bank refuse keyed-prf outright, even for an analysis
//! it has approved: under keyed-prf a coordinator colluding with one bank can test
//! guessed keys against this bank's list, under the ECDH ring it cannot
//! (README, leakage table).

use cleanroom::analysis::PrivacyCost;
use cleanroom::{Analysis, Psi};
use serde::Deserialize;

/// The policy for one coordinator identity. The default admits every
/// approved analysis, caps nothing and shows every table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Total epsilon this identity may spend at this node.
    pub epsilon_budget: Option<f64>,
    /// Total delta this identity may spend at this node.
    pub delta_budget: Option<f64>,
    /// Lowest `min_matched` an analysis may set.
    #[serde(default)]
    pub min_matched_floor: u64,
    /// Whether every analysis must be differentially private.
    #[serde(default)]
    pub require_dp: bool,
    /// Largest epsilon per released number an analysis may set (without
    /// it, `require_dp` is met by an epsilon so large that the noise is
    /// nil).
    pub max_epsilon: Option<f64>,
    /// Tables the catalog shows to this identity (all when absent).
    pub catalog_tables: Option<Vec<String>>,
    /// Matching protocols this identity may run here (all when absent).
    pub allowed_psi: Option<Vec<Psi>>,
}

/// What a coordinator identity has spent at this node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    /// Epsilon in millionths.
    pub epsilon_micro: u64,
    /// Delta.
    pub delta: f64,
    /// Runs released without DP (exact releases; they spend no epsilon).
    pub exact_runs: u64,
    /// DP runs debited.
    pub dp_runs: u64,
}

impl Spent {
    /// Epsilon as a decimal.
    pub fn epsilon(&self) -> f64 {
        self.epsilon_micro as f64 / cleanroom::dp::EPSILON_DENOMINATOR as f64
    }
}

/// Why the policy refuses an analysis. Sent to the coordinator (whose policy
/// it is): names the rule and the analysis's own settings, never data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The policy requires DP and the analysis has no epsilon.
    #[error("this node's policy for coordinator {0:?} requires differential privacy (set epsilon)")]
    DpRequired(String),
    /// The analysis's epsilon is above the policy's maximum.
    #[error(
        "analysis sets epsilon = {got}; this node's policy allows at most {max} per released number"
    )]
    EpsilonTooLarge {
        /// The analysis's epsilon.
        got: f64,
        /// The policy's maximum.
        max: f64,
    },
    /// The analysis's matching protocol is not one the policy allows.
    #[error(
        "analysis uses psi = {got:?}; this node's policy for coordinator {coordinator:?} allows only {allowed}"
    )]
    PsiNotAllowed {
        /// The coordinator identity.
        coordinator: String,
        /// The analysis's protocol, by name.
        got: String,
        /// The protocols the policy allows, by name, comma-separated.
        allowed: String,
    },
    /// `min_matched` is below the policy's floor.
    #[error("analysis sets min_matched = {got}; this node's policy requires at least {floor}")]
    BelowFloor {
        /// The analysis's value.
        got: u64,
        /// The policy's floor.
        floor: u64,
    },
    /// The run costs more than the remaining budget.
    #[error(
        "privacy budget of coordinator {coordinator:?} exhausted: the run costs ε = {cost_epsilon}, δ = {cost_delta:e}; remaining ε = {left_epsilon}, δ = {left_delta:e}"
    )]
    BudgetExhausted {
        /// The coordinator identity.
        coordinator: String,
        /// The run's epsilon.
        cost_epsilon: f64,
        /// The run's delta.
        cost_delta: f64,
        /// Remaining epsilon.
        left_epsilon: f64,
        /// Remaining delta.
        left_delta: f64,
    },
}

impl Policy {
    /// Checks the rules that depend only on the analysis.
    pub fn admit(&self, coordinator: &str, analysis: &Analysis) -> Result<(), Refusal> {
        if let Some(allowed) = &self.allowed_psi
            && !allowed.contains(&analysis.psi)
        {
            return Err(Refusal::PsiNotAllowed {
                coordinator: coordinator.to_string(),
                got: analysis.psi.name().to_string(),
                allowed: allowed
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if self.require_dp && analysis.privacy.dp.is_none() {
            return Err(Refusal::DpRequired(coordinator.to_string()));
        }
        if let (Some(max), Some(dp)) = (self.max_epsilon, &analysis.privacy.dp)
            && dp.epsilon > max
        {
            return Err(Refusal::EpsilonTooLarge {
                got: dp.epsilon,
                max,
            });
        }
        if analysis.privacy.min_matched < self.min_matched_floor {
            return Err(Refusal::BelowFloor {
                got: analysis.privacy.min_matched,
                floor: self.min_matched_floor,
            });
        }
        Ok(())
    }

    /// Checks that `cost` fits in what is left after `spent`.
    pub fn afford(
        &self,
        coordinator: &str,
        spent: &Spent,
        cost: Option<&PrivacyCost>,
    ) -> Result<(), Refusal> {
        let Some(cost) = cost else {
            return Ok(());
        };
        let budget_micro = self
            .epsilon_budget
            .map(|e| cleanroom::dp::epsilon_micro(e).unwrap_or(0));
        let eps_ok = budget_micro
            .is_none_or(|b| spent.epsilon_micro.saturating_add(cost.epsilon_micro) <= b);
        let delta_ok = self
            .delta_budget
            .is_none_or(|b| spent.delta + cost.delta <= b);
        if eps_ok && delta_ok {
            return Ok(());
        }
        let micro = cleanroom::dp::EPSILON_DENOMINATOR as f64;
        Err(Refusal::BudgetExhausted {
            coordinator: coordinator.to_string(),
            cost_epsilon: cost.epsilon(),
            cost_delta: cost.delta,
            left_epsilon: budget_micro.map_or(f64::INFINITY, |b| {
                b.saturating_sub(spent.epsilon_micro) as f64 / micro
            }),
            left_delta: self
                .delta_budget
                .map_or(f64::INFINITY, |b| (b - spent.delta).max(0.0)),
        })
    }

    /// Whether the catalog shows `table` to this identity.
    pub fn shows(&self, table: &str) -> bool {
        self.catalog_tables
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == table))
    }

    /// Checks the values themselves (called when the config is loaded).
    pub fn validate(&self, name: &str) -> Result<(), String> {
        if let Some(e) = self.epsilon_budget
            && !(e.is_finite() && e >= 0.0)
        {
            return Err(format!(
                "policy.{name}.epsilon_budget must be a finite number >= 0"
            ));
        }
        if let Some(e) = self.max_epsilon
            && !(e.is_finite() && e > 0.0)
        {
            return Err(format!(
                "policy.{name}.max_epsilon must be a finite number > 0"
            ));
        }
        if let Some(d) = self.delta_budget
            && !(d.is_finite() && (0.0..1.0).contains(&d))
        {
            return Err(format!("policy.{name}.delta_budget must be in [0, 1)"));
        }
        if self.allowed_psi.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!(
                "policy.{name}.allowed_psi must name at least one protocol (ecdh-ring, keyed-prf)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An analysis file of two parties with `privacy` as its privacy table.
    fn text(privacy: &str) -> String {
        format!(
            "name = \"t\"\nrecipient = \"a\"\n[parties.a]\nsql = \"s\"\n[parties.b]\nsql = \"s\"\n\
             [output]\naggregates = [\"count\", \"sum(a.x)\"]\n[privacy]\n{privacy}\n"
        )
    }

    fn analysis(privacy: &str) -> Analysis {
        Analysis::parse(&text(privacy)).unwrap()
    }

    #[test]
    fn rules_refuse_by_name() {
        let p = Policy {
            require_dp: true,
            min_matched_floor: 20,
            ..Policy::default()
        };
        assert_eq!(
            p.admit("c", &analysis("min_matched = 30")),
            Err(Refusal::DpRequired("c".into()))
        );
        let dp = analysis("min_matched = 10\nepsilon = 1.0\n[privacy.bounds]\n\"a.x\" = 5");
        assert_eq!(
            p.admit("c", &dp),
            Err(Refusal::BelowFloor { got: 10, floor: 20 })
        );
        assert!(Policy::default().admit("c", &dp).is_ok());
        let capped = Policy {
            require_dp: true,
            max_epsilon: Some(0.5),
            ..Policy::default()
        };
        assert_eq!(
            capped.admit("c", &dp),
            Err(Refusal::EpsilonTooLarge { got: 1.0, max: 0.5 })
        );
    }

    #[test]
    fn a_policy_can_refuse_a_matching_protocol() {
        let ring = analysis("min_matched = 1");
        let prf = Analysis::parse(&format!(
            "{}[protocol]\npsi = \"keyed-prf\"\n",
            text("min_matched = 1")
        ))
        .unwrap();
        assert_eq!(prf.psi, Psi::KeyedPrf);
        let ring_only = Policy {
            allowed_psi: Some(vec![Psi::EcdhRing]),
            ..Policy::default()
        };
        assert!(ring_only.admit("c", &ring).is_ok());
        let refused = ring_only.admit("c", &prf).unwrap_err();
        assert_eq!(
            refused,
            Refusal::PsiNotAllowed {
                coordinator: "c".into(),
                got: "keyed-prf".into(),
                allowed: "ecdh-ring".into(),
            }
        );
        assert!(refused.to_string().contains("psi = \"keyed-prf\""));
        // Absent: both; empty: a configuration error, not a silent "none".
        assert!(Policy::default().admit("c", &prf).is_ok());
        let none = Policy {
            allowed_psi: Some(Vec::new()),
            ..Policy::default()
        };
        assert!(none.validate("c").unwrap_err().contains("allowed_psi"));
        // As written in a node config.
        let parsed: Policy = toml::from_str("allowed_psi = [\"ecdh-ring\"]").unwrap();
        assert_eq!(parsed, ring_only);
        assert!(toml::from_str::<Policy>("allowed_psi = [\"ecdh\"]").is_err());
    }

    #[test]
    fn budgets_are_exact_in_millionths() {
        let a = analysis("epsilon = 0.5\n[privacy.bounds]\n\"a.x\" = 5");
        let cost = a.privacy_cost().unwrap();
        assert_eq!(cost.epsilon_micro, 1_000_000); // count + one sum
        let p = Policy {
            epsilon_budget: Some(3.0),
            ..Policy::default()
        };
        let mut spent = Spent::default();
        for _ in 0..3 {
            p.afford("c", &spent, Some(&cost)).unwrap();
            spent.epsilon_micro += cost.epsilon_micro;
        }
        assert!(matches!(
            p.afford("c", &spent, Some(&cost)),
            Err(Refusal::BudgetExhausted { .. })
        ));
        // Exact releases spend no epsilon.
        p.afford("c", &spent, None).unwrap();
    }
}
