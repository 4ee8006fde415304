//! The analysis file: what each party computes locally, what is released, to
//! whom, and under which privacy settings. Every participating bank approves
//! an analysis by its [`AnalysisHash`] before it can run.
//!
//! ```toml
//! name = "mule-cashout"
//! recipient = "bank-b"
//! key = ["string", "integer"]      # join-key parts: the first columns of each query
//! [parties.bank-a]
//! sql = "SELECT to_account, day, count(*) AS transfers FROM transfers GROUP BY to_account, day"
//! [parties.bank-b]
//! sql = "SELECT account, day, count(*) AS cashouts FROM deposits GROUP BY account, day"
//! [output]
//! aggregates = ["count", "sum(bank-a.transfers)", "sum(bank-b.cashouts)"]
//! [privacy]
//! min_matched = 10                 # refuse to release below this many matched keys
//! epsilon = 1.0                    # optional: DP noise on every released number
//! [privacy.bounds]                 # with epsilon: per-key cap of each summed feature
//! "bank-a.transfers" = 50
//! "bank-b.cashouts" = 50
//! ```
//!
//! Parsing is strict: unknown fields, unknown parties, malformed aggregates,
//! duplicate aggregates and invalid privacy settings are each a specific
//! [`AnalysisError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::dp::{DpError, Noise};
use crate::keys::KeyType;

/// Default for `privacy.min_matched` when the file does not set it.
pub const DEFAULT_MIN_MATCHED: u64 = 10;
/// Delta of the noisy match count that unmaskers see under DP (DESIGN.md
/// step 7) when the analysis gives no `delta`.
pub const DEFAULT_COUNT_HIDING_DELTA: f64 = 1e-9;
/// Most dummy rows per list that hiding the match count may require.
pub const MAX_DUMMY_ROWS: u64 = 1_000_000;

/// Why an analysis file was rejected.
#[derive(Debug, Error, PartialEq)]
pub enum AnalysisError {
    /// Not valid TOML, a missing field, a wrong type or an unknown field.
    #[error("analysis file is malformed: {0}")]
    Syntax(String),
    /// The analysis name is empty.
    #[error("analysis name must not be empty")]
    EmptyName,
    /// A party name is not a lowercase DNS label (it must match certificates).
    #[error("party name {0:?} must be lowercase letters, digits and '-' (a DNS label)")]
    BadPartyName(String),
    /// Fewer than two parties.
    #[error("an analysis needs at least 2 parties, got {0}")]
    TooFewParties(usize),
    /// A party has an empty query.
    #[error("party {0:?} has an empty sql query")]
    EmptySql(String),
    /// The key declares no parts.
    #[error("key must declare at least one part")]
    EmptyKey,
    /// The recipient is not one of the parties.
    #[error("recipient {0:?} is not one of the parties")]
    UnknownRecipient(String),
    /// An aggregate names a party that is not in `[parties]`.
    #[error("aggregate {aggregate:?} names unknown party {party:?}")]
    UnknownParty {
        /// The aggregate text.
        aggregate: String,
        /// The unknown party.
        party: String,
    },
    /// An aggregate is neither `count` nor `sum(party.column)`.
    #[error("aggregate {0:?} is not `count` or `sum(party.column)`")]
    BadAggregate(String),
    /// The same aggregate is listed twice.
    #[error("aggregate {0:?} is listed twice")]
    DuplicateAggregate(String),
    /// No aggregates.
    #[error("output.aggregates must not be empty")]
    NoAggregates,
    /// Invalid epsilon / delta / bounds.
    #[error("privacy: {0}")]
    Privacy(#[from] DpError),
    /// `delta` without `mechanism = "gaussian"` or the reverse.
    #[error("privacy: mechanism \"gaussian\" requires delta, and delta is only used by it")]
    DeltaMismatch,
    /// A DP analysis sums a feature without a declared bound.
    #[error("privacy: epsilon is set but feature {0:?} has no entry in [privacy.bounds]")]
    MissingBound(String),
    /// A bound names a feature that is not summed, or bounds without epsilon.
    #[error("privacy: bound {0:?} does not belong to a summed feature of a DP analysis")]
    UnusedBound(String),
    /// Epsilon so small that hiding the match count needs too many dummies.
    #[error(
        "privacy: epsilon {0} would need more than {MAX_DUMMY_ROWS} dummy rows per list to hide the match count"
    )]
    TooManyDummies(f64),
    /// `pad_to_multiple` of zero.
    #[error("privacy: pad_to_multiple must be >= 1")]
    BadPadding,
}

/// One released number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Aggregate {
    /// The number of keys present in every party's list.
    Count,
    /// The sum over matched keys of one party's feature column.
    Sum {
        /// Party that holds the column.
        party: String,
        /// Output column of that party's query.
        column: String,
    },
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregate::Count => f.write_str("count"),
            Aggregate::Sum { party, column } => write!(f, "sum({party}.{column})"),
        }
    }
}

/// The noise mechanism of a DP analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Discrete Laplace, pure epsilon-DP per released number.
    #[default]
    Laplace,
    /// Discrete Gaussian, (epsilon, delta)-DP per released number.
    Gaussian,
}

/// Differential-privacy settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DpSpec {
    /// Privacy loss per released number.
    pub epsilon: f64,
    /// For the Gaussian mechanism.
    pub delta: Option<f64>,
    /// Which sampler.
    pub mechanism: Mechanism,
    /// Per-key cap of each summed feature (`"party.column"` → cap); features
    /// are clamped to it at the node, which makes it the sum's sensitivity.
    pub bounds: BTreeMap<String, u64>,
}

impl DpSpec {
    /// Shift of the truncated discrete Laplace that hides the match count
    /// from unmaskers (step 7): `ceil(ln(1/δ) / ε)`, so that truncating to
    /// `[0, 2·shift]` costs at most δ.
    pub fn dummy_shift(&self) -> u64 {
        let delta = self.delta.unwrap_or(DEFAULT_COUNT_HIDING_DELTA);
        ((1.0 / delta).ln() / self.epsilon).ceil().max(1.0) as u64
    }

    /// The noise for a value of the given sensitivity.
    pub fn noise(&self, sensitivity: u64) -> Result<Noise, DpError> {
        match self.mechanism {
            Mechanism::Laplace => Noise::laplace(self.epsilon, sensitivity),
            Mechanism::Gaussian => {
                Noise::gaussian(self.epsilon, self.delta.unwrap_or(0.0), sensitivity)
            }
        }
    }
}

/// Release conditions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Privacy {
    /// Refuse to release when fewer keys matched (under DP: the noisy count).
    pub min_matched: u64,
    /// Optional DP noise on every released number.
    pub dp: Option<DpSpec>,
    /// Pad every list with dummy rows up to a multiple of this size.
    pub pad_to_multiple: Option<u64>,
}

/// A party and its local query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Party {
    /// The party's name (as in its certificate).
    pub name: String,
    /// Query over the party's own tables: key parts first, then features.
    pub sql: String,
}

/// A validated analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// Human-readable name.
    pub name: String,
    /// Party whose node receives and unmasks the result.
    pub recipient: String,
    /// Types of the join-key parts.
    pub key: Vec<KeyType>,
    /// Parties, sorted by name (this order is the blinding/unmasking ring).
    pub parties: Vec<Party>,
    /// Released numbers, in file order.
    pub aggregates: Vec<Aggregate>,
    /// Release conditions.
    pub privacy: Privacy,
}

/// SHA-256 over the canonical form of an analysis.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnalysisHash(pub [u8; 32]);

impl AnalysisHash {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses lowercase or uppercase hex of 32 bytes.
    pub fn from_hex(s: &str) -> Option<Self> {
        hex::decode(s.trim())
            .ok()?
            .try_into()
            .ok()
            .map(AnalysisHash)
    }
    /// Parses 32 raw bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(AnalysisHash)
    }
}

impl fmt::Display for AnalysisHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AnalysisHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AnalysisHash({})", self.to_hex())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    name: String,
    recipient: String,
    #[serde(default)]
    key: Option<Vec<KeyType>>,
    parties: BTreeMap<String, RawParty>,
    output: RawOutput,
    #[serde(default)]
    privacy: RawPrivacy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParty {
    sql: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    aggregates: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    min_matched: Option<u64>,
    epsilon: Option<f64>,
    delta: Option<f64>,
    mechanism: Option<Mechanism>,
    #[serde(default)]
    bounds: BTreeMap<String, u64>,
    pad_to_multiple: Option<u64>,
}

fn is_party_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_column_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_aggregate(text: &str) -> Result<Aggregate, AnalysisError> {
    let t = text.trim();
    if t == "count" {
        return Ok(Aggregate::Count);
    }
    let inner = t
        .strip_prefix("sum(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| AnalysisError::BadAggregate(text.to_string()))?;
    let (party, column) = inner
        .trim()
        .split_once('.')
        .ok_or_else(|| AnalysisError::BadAggregate(text.to_string()))?;
    if !is_party_name(party) || !is_column_name(column) {
        return Err(AnalysisError::BadAggregate(text.to_string()));
    }
    Ok(Aggregate::Sum {
        party: party.to_string(),
        column: column.to_string(),
    })
}

impl Analysis {
    /// Parses and validates an analysis file.
    pub fn parse(text: &str) -> Result<Self, AnalysisError> {
        let raw: RawAnalysis =
            toml::from_str(text).map_err(|e| AnalysisError::Syntax(e.message().to_string()))?;
        if raw.name.trim().is_empty() {
            return Err(AnalysisError::EmptyName);
        }
        if raw.parties.len() < 2 {
            return Err(AnalysisError::TooFewParties(raw.parties.len()));
        }
        let mut parties = Vec::new();
        for (name, p) in raw.parties {
            if !is_party_name(&name) {
                return Err(AnalysisError::BadPartyName(name));
            }
            if p.sql.trim().is_empty() {
                return Err(AnalysisError::EmptySql(name));
            }
            parties.push(Party { name, sql: p.sql });
        }
        if !parties.iter().any(|p| p.name == raw.recipient) {
            return Err(AnalysisError::UnknownRecipient(raw.recipient));
        }
        let key = raw.key.unwrap_or_else(|| vec![KeyType::String]);
        if key.is_empty() {
            return Err(AnalysisError::EmptyKey);
        }
        if raw.output.aggregates.is_empty() {
            return Err(AnalysisError::NoAggregates);
        }
        let mut aggregates = Vec::new();
        for text in &raw.output.aggregates {
            let a = parse_aggregate(text)?;
            if let Aggregate::Sum { party, .. } = &a
                && !parties.iter().any(|p| &p.name == party)
            {
                return Err(AnalysisError::UnknownParty {
                    aggregate: text.clone(),
                    party: party.clone(),
                });
            }
            if aggregates.contains(&a) {
                return Err(AnalysisError::DuplicateAggregate(text.clone()));
            }
            aggregates.push(a);
        }
        let p = raw.privacy;
        let dp = match p.epsilon {
            None => {
                if let Some(b) = p.bounds.keys().next() {
                    return Err(AnalysisError::UnusedBound(b.clone()));
                }
                if p.delta.is_some() || p.mechanism.is_some() {
                    return Err(AnalysisError::DeltaMismatch);
                }
                None
            }
            Some(epsilon) => {
                let mechanism = p.mechanism.unwrap_or_default();
                if (mechanism == Mechanism::Gaussian) != p.delta.is_some() {
                    return Err(AnalysisError::DeltaMismatch);
                }
                let spec = DpSpec {
                    epsilon,
                    delta: p.delta,
                    mechanism,
                    bounds: p.bounds,
                };
                spec.noise(1)?; // validates epsilon and delta
                let summed: BTreeSet<String> = aggregates
                    .iter()
                    .filter_map(|a| match a {
                        Aggregate::Sum { party, column } => Some(format!("{party}.{column}")),
                        Aggregate::Count => None,
                    })
                    .collect();
                for f in &summed {
                    match spec.bounds.get(f) {
                        None => return Err(AnalysisError::MissingBound(f.clone())),
                        Some(&b) => {
                            spec.noise(b.max(1))?;
                        }
                    }
                }
                if let Some(b) = spec.bounds.keys().find(|b| !summed.contains(*b)) {
                    return Err(AnalysisError::UnusedBound(b.clone()));
                }
                if 2 * spec.dummy_shift() > MAX_DUMMY_ROWS {
                    return Err(AnalysisError::TooManyDummies(epsilon));
                }
                Some(spec)
            }
        };
        if p.pad_to_multiple == Some(0) {
            return Err(AnalysisError::BadPadding);
        }
        Ok(Analysis {
            name: raw.name,
            recipient: raw.recipient,
            key,
            parties,
            aggregates,
            privacy: Privacy {
                min_matched: p.min_matched.unwrap_or(DEFAULT_MIN_MATCHED),
                dp,
                pad_to_multiple: p.pad_to_multiple,
            },
        })
    }

    /// The approval hash: SHA-256 of a domain tag and the canonical JSON form
    /// of the validated analysis (parties sorted, defaults filled in), so
    /// formatting, comments and field order in the file do not change it.
    pub fn hash(&self) -> AnalysisHash {
        let canonical = serde_json::to_vec(self).expect("analysis serializes to JSON");
        let mut h = Sha256::new();
        h.update(b"cleanroom/analysis/v1\n");
        h.update(&canonical);
        AnalysisHash(h.finalize().into())
    }

    /// Party names in ring order.
    pub fn party_names(&self) -> Vec<&str> {
        self.parties.iter().map(|p| p.name.as_str()).collect()
    }

    /// Index of a party in ring order.
    pub fn party_index(&self, name: &str) -> Option<usize> {
        self.parties.iter().position(|p| p.name == name)
    }

    /// The feature columns a party must provide, in order of first use in
    /// the aggregates; its masked rows hold exactly these.
    pub fn features(&self, party: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in &self.aggregates {
            if let Aggregate::Sum { party: p, column } = a
                && p == party
                && !out.contains(column)
            {
                out.push(column.clone());
            }
        }
        out
    }

    /// Where the sum of `party.column` lives in the protocol: the party's ring
    /// index and the column's index among [`Analysis::features`].
    pub fn sum_slot(&self, party: &str, column: &str) -> Option<(usize, usize)> {
        let p = self.party_index(party)?;
        let f = self.features(party).iter().position(|c| c == column)?;
        Some((p, f))
    }

    /// Dummy rows each node adds under DP so the coordinator can hide the
    /// match count from unmaskers (step 7): twice the shift; 0 without DP.
    pub fn dp_dummy_rows(&self) -> u64 {
        self.privacy.dp.as_ref().map_or(0, |d| 2 * d.dummy_shift())
    }

    /// The DP bound of a party's feature, if the analysis is DP.
    pub fn bound(&self, party: &str, column: &str) -> Option<u64> {
        let dp = self.privacy.dp.as_ref()?;
        dp.bounds.get(&format!("{party}.{column}")).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "mule-cashout"
recipient = "bank-b"
[parties.bank-a]
sql = """SELECT to_account AS key, count(*) AS transfers, sum(amount_cents) AS amount
         FROM transfers WHERE amount_cents >= 1000000 AND to_bank = 'BANKB'
         GROUP BY to_account"""
[parties.bank-b]
sql = """SELECT account AS key, count(*) AS cashouts FROM deposits GROUP BY account"""
[output]
aggregates = ["count", "sum(bank-a.transfers)", "sum(bank-a.amount)", "sum(bank-b.cashouts)"]
[privacy]
min_matched = 10
epsilon = 1.0
[privacy.bounds]
"bank-a.transfers" = 100
"bank-a.amount" = 100000000
"bank-b.cashouts" = 100
"#;

    #[test]
    fn accepts_the_design_example() {
        let a = Analysis::parse(EXAMPLE).unwrap();
        assert_eq!(a.party_names(), ["bank-a", "bank-b"]);
        assert_eq!(a.features("bank-a"), ["transfers", "amount"]);
        assert_eq!(a.features("bank-b"), ["cashouts"]);
        assert_eq!(a.aggregates.len(), 4);
        assert_eq!(a.key, vec![KeyType::String]);
        assert_eq!(a.privacy.min_matched, 10);
        assert_eq!(a.bound("bank-a", "amount"), Some(100_000_000));
        // ln(1e9) / 1.0 = 20.7 → shift 21, 42 dummy rows per list.
        assert_eq!(a.dp_dummy_rows(), 42);
    }

    #[test]
    fn hash_is_canonical() {
        let a = Analysis::parse(EXAMPLE).unwrap();
        let reformatted = format!(
            "# a comment\n{}",
            EXAMPLE.replace("min_matched = 10", "min_matched=10")
        );
        assert_eq!(a.hash(), Analysis::parse(&reformatted).unwrap().hash());
        let changed = EXAMPLE.replace("min_matched = 10", "min_matched = 11");
        assert_ne!(a.hash(), Analysis::parse(&changed).unwrap().hash());
        assert_eq!(AnalysisHash::from_hex(&a.hash().to_hex()), Some(a.hash()));
    }

    fn err(text: &str) -> AnalysisError {
        Analysis::parse(text).unwrap_err()
    }

    #[test]
    fn rejects_each_bad_input_specifically() {
        let e = |from: &str, to: &str| err(&EXAMPLE.replace(from, to));
        assert_eq!(
            e("sum(bank-b.cashouts)", "sum(bank-c.cashouts)"),
            AnalysisError::UnknownParty {
                aggregate: "sum(bank-c.cashouts)".into(),
                party: "bank-c".into()
            }
        );
        assert_eq!(
            e("\"count\",", "\"avg(x)\","),
            AnalysisError::BadAggregate("avg(x)".into())
        );
        assert_eq!(
            e(
                "\"sum(bank-b.cashouts)\"]",
                "\"sum(bank-b.cashouts)\", \"count\"]"
            ),
            AnalysisError::DuplicateAggregate("count".into())
        );
        assert_eq!(
            e("epsilon = 1.0", "epsilon = 0.0"),
            AnalysisError::Privacy(DpError::BadEpsilon(0.0))
        );
        assert_eq!(
            e("epsilon = 1.0", "epsilon = -2.0"),
            AnalysisError::Privacy(DpError::BadEpsilon(-2.0))
        );
        assert_eq!(
            e("recipient = \"bank-b\"", "recipient = \"bank-z\""),
            AnalysisError::UnknownRecipient("bank-z".into())
        );
        assert_eq!(
            e("\"bank-b.cashouts\" = 100", ""),
            AnalysisError::MissingBound("bank-b.cashouts".into())
        );
        assert_eq!(
            e(
                "\"bank-b.cashouts\" = 100",
                "\"bank-b.cashouts\" = 100\n\"bank-b.other\" = 1"
            ),
            AnalysisError::UnusedBound("bank-b.other".into())
        );
        assert_eq!(
            e("epsilon = 1.0", "epsilon = 1.0\ndelta = 1e-6"),
            AnalysisError::DeltaMismatch
        );
        assert_eq!(
            e("[parties.bank-a]", "[parties.Bank_A]"),
            AnalysisError::BadPartyName("Bank_A".into())
        );
        assert!(
            matches!(e("min_matched = 10", "min_matched = 10\nfoo = 1"), AnalysisError::Syntax(m) if m.contains("foo"))
        );
        // Duplicate party names are duplicate TOML tables.
        assert!(matches!(
            e("[parties.bank-b]", "[parties.bank-a]"),
            AnalysisError::Syntax(m) if m.contains("duplicate") || m.contains("defined")
        ));
        assert_eq!(
            e("name = \"mule-cashout\"", "name = \" \""),
            AnalysisError::EmptyName
        );
        let one = "name = \"x\"\nrecipient = \"a\"\n[parties.a]\nsql = \"select 1\"\n[output]\naggregates = [\"count\"]\n";
        assert_eq!(err(one), AnalysisError::TooFewParties(1));
    }

    #[test]
    fn gaussian_needs_delta() {
        let g = EXAMPLE.replace(
            "epsilon = 1.0",
            "epsilon = 1.0\nmechanism = \"gaussian\"\ndelta = 1e-6",
        );
        // A cap of 1e8 cents needs σ ≈ 5e8: too large for exact arithmetic.
        assert_eq!(err(&g), AnalysisError::Privacy(DpError::Overflow));
        let g = g.replace("= 100000000", "= 1000000");
        assert_eq!(
            Analysis::parse(&g).unwrap().privacy.dp.unwrap().mechanism,
            Mechanism::Gaussian
        );
        let g = EXAMPLE.replace("epsilon = 1.0", "epsilon = 1.0\nmechanism = \"gaussian\"");
        assert_eq!(err(&g), AnalysisError::DeltaMismatch);
    }
}
