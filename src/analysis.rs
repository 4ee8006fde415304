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
//! expires = "2027-01-01"          # optional: refused from this date (UTC) on
//! [output]
//! aggregates = ["count", "sum(bank-a.transfers)", "sum(bank-b.cashouts)"]
//! # optional: one count and one sum per declared group of a column of one party
//! # group_by = "bank-a.band"
//! # groups = ["<10k", "10k-100k", ">=100k"]
//! [protocol]                       # optional
//! psi = "ecdh-ring"                # or "keyed-prf" (see [`Psi`]); part of the hash
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
/// Largest `pad_to_multiple`: a bucket of 2^20 rows already hides a list's
/// size to within a million; larger buckets only cost memory.
pub const MAX_PAD_TO_MULTIPLE: u64 = 1 << 20;
/// Most groups `[output] groups` may declare. Every party but the grouping
/// one sends each key once per group, so lists grow by this factor.
pub const MAX_GROUPS: usize = 64;

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
    /// `pad_to_multiple` outside `1..=2^20`.
    #[error("privacy: pad_to_multiple must be between 1 and {MAX_PAD_TO_MULTIPLE}")]
    BadPadding,
    /// `expires` is not a calendar date.
    #[error("expires must be a date written YYYY-MM-DD, got {0:?}")]
    BadExpiry(String),
    /// `group_by` is not `party.column` of a party of the analysis.
    #[error("output.group_by {0:?} must be `party.column` naming a party of the analysis")]
    BadGroupBy(String),
    /// `group_by` without `groups`, or the reverse.
    #[error("output.group_by and output.groups must be given together")]
    GroupsMismatch,
    /// The declared groups are empty, repeated, blank or too many.
    #[error("output.groups: {0}")]
    BadGroups(String),
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

/// The private set intersection protocol of an analysis (`[protocol] psi`).
///
/// Both reveal the same to every party as long as the coordinator colludes
/// with no bank; they differ in what a coordinator colluding with one bank
/// can do (see the README's leakage table and docs/design.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Psi {
    /// Every list is blinded by every party's secret scalar in turn around
    /// the ring (Diffie–Hellman PSI). No party's secret lets anyone test a
    /// guessed key of another bank. The default.
    #[default]
    EcdhRing,
    /// Server-aided PSI (Kamara et al., FC 2014): the banks share a fresh
    /// group key the coordinator never sees and send keyed tags of their
    /// keys; the coordinator matches tags. One pass, at hashing speed; but a
    /// coordinator colluding with one bank (who holds the group key) can
    /// test guessed keys against every bank's list.
    KeyedPrf,
}

impl Psi {
    /// The name used in analysis files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Psi::EcdhRing => "ecdh-ring",
            Psi::KeyedPrf => "keyed-prf",
        }
    }

    /// Parses a name as written in analysis files.
    pub fn from_name(name: &str) -> Option<Self> {
        [Psi::EcdhRing, Psi::KeyedPrf]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// Whether this is the default (and so left out of the canonical form).
    pub fn is_default(&self) -> bool {
        *self == Psi::default()
    }
}

impl fmt::Display for Psi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
    /// Epsilon as the samplers use it: rounded down to a multiple of 1e-6,
    /// in millionths. (Validated at parse time, so never zero.)
    pub fn epsilon_micro(&self) -> u64 {
        crate::dp::epsilon_micro(self.epsilon).unwrap_or(1)
    }

    /// The delta of the noisy count (step 7): the analysis's `delta`, or
    /// [`DEFAULT_COUNT_HIDING_DELTA`].
    pub fn count_delta(&self) -> f64 {
        self.delta.unwrap_or(DEFAULT_COUNT_HIDING_DELTA)
    }

    /// Shift of the truncated discrete Laplace that hides the match count
    /// from unmaskers and noises the released count (step 7): the least
    /// `s >= 1` with `exp(-ε·s) <= δ`, computed with the rounded ε the
    /// sampler uses, so truncating to `[0, 2·shift]` costs at most δ.
    pub fn dummy_shift(&self) -> u64 {
        let eps = self.epsilon_micro() as f64 / crate::dp::EPSILON_DENOMINATOR as f64;
        let delta = self.count_delta();
        let mut s = ((1.0 / delta).ln() / eps).ceil().max(1.0) as u64;
        // Guard against float error in the division: make the bound hold.
        while (-(eps * s as f64)).exp() > delta {
            s += 1;
        }
        s
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

/// Grouped results: one count and one set of sums per declared group.
///
/// The group of a key is the value of `column` in the grouping `party`'s
/// query output; it must be one of `groups`, which the analysis declares up
/// front, so the set of groups (and their order) never comes from data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grouping {
    /// The party whose query output holds the group column.
    pub party: String,
    /// The group column of that party's query output.
    pub column: String,
    /// The declared group labels, in release order.
    pub groups: Vec<String>,
}

impl Grouping {
    /// Index of a group label, if declared.
    pub fn index(&self, label: &str) -> Option<usize> {
        self.groups.iter().position(|g| g == label)
    }
}

/// What a run costs in differential privacy, by basic composition over the
/// released numbers: the count once (its noise is the single draw of step 7,
/// which the unmaskers see too) and every sum once. Groups partition the
/// keys, so by parallel composition they cost no more than one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyCost {
    /// Total epsilon in millionths (epsilon is rounded down to a multiple of
    /// 1e-6 before sampling, so this is exact).
    pub epsilon_micro: u64,
    /// Total delta (the count's truncation delta plus, under the Gaussian
    /// mechanism, the delta of every sum).
    pub delta: f64,
}

impl PrivacyCost {
    /// Epsilon as a decimal.
    pub fn epsilon(&self) -> f64 {
        self.epsilon_micro as f64 / crate::dp::EPSILON_DENOMINATOR as f64
    }
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
    /// Grouped results, when `[output] group_by` is set. (Skipped in the
    /// canonical form when absent, so ungrouped analyses keep their hash.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grouping: Option<Grouping>,
    /// Last day before which the analysis may run: `expires = "2027-01-01"`
    /// is refused from 2027-01-01T00:00:00Z on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Release conditions.
    pub privacy: Privacy,
    /// The matching protocol (`[protocol] psi`). Skipped in the canonical
    /// form when it is the default, so analyses written before the choice
    /// existed keep their hash; any other choice changes the hash, so every
    /// bank approves it.
    #[serde(skip_serializing_if = "Psi::is_default")]
    pub psi: Psi,
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
    #[serde(default)]
    expires: Option<String>,
    parties: BTreeMap<String, RawParty>,
    output: RawOutput,
    #[serde(default)]
    privacy: RawPrivacy,
    #[serde(default)]
    protocol: RawProtocol,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    psi: Option<String>,
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
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
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

/// Seconds since the Unix epoch at 00:00:00 UTC of a `YYYY-MM-DD` date.
pub fn parse_date(text: &str) -> Option<i64> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text.trim(), &fmt).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

fn parse_grouping(
    group_by: Option<String>,
    groups: Option<Vec<String>>,
    parties: &[Party],
) -> Result<Option<Grouping>, AnalysisError> {
    let (group_by, groups) = match (group_by, groups) {
        (None, None) => return Ok(None),
        (Some(b), Some(g)) => (b, g),
        _ => return Err(AnalysisError::GroupsMismatch),
    };
    let (party, column) = group_by
        .split_once('.')
        .filter(|(p, c)| parties.iter().any(|x| x.name == *p) && is_column_name(c))
        .ok_or_else(|| AnalysisError::BadGroupBy(group_by.clone()))?;
    // One group would be the whole intersection: its count is the match
    // count, which the coordinator knows.
    if groups.len() < 2 {
        return Err(AnalysisError::BadGroups(
            "declare at least two groups".into(),
        ));
    }
    if groups.len() > MAX_GROUPS {
        return Err(AnalysisError::BadGroups(format!(
            "at most {MAX_GROUPS} groups, got {}",
            groups.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for g in &groups {
        if g.trim().is_empty() || g.trim() != g {
            return Err(AnalysisError::BadGroups(format!(
                "label {g:?} is blank or has surrounding white space"
            )));
        }
        if !seen.insert(g) {
            return Err(AnalysisError::BadGroups(format!("label {g:?} is repeated")));
        }
    }
    Ok(Some(Grouping {
        party: party.to_string(),
        column: column.to_string(),
        groups,
    }))
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
        if p.pad_to_multiple
            .is_some_and(|m| m == 0 || m > MAX_PAD_TO_MULTIPLE)
        {
            return Err(AnalysisError::BadPadding);
        }
        if let Some(e) = &raw.expires
            && parse_date(e).is_none()
        {
            return Err(AnalysisError::BadExpiry(e.clone()));
        }
        let psi = match raw.protocol.psi.as_deref() {
            None => Psi::default(),
            Some(name) => Psi::from_name(name).ok_or_else(|| {
                AnalysisError::Syntax(format!(
                    "protocol.psi {name:?} is not a protocol: use \"ecdh-ring\" or \"keyed-prf\""
                ))
            })?,
        };
        let grouping = parse_grouping(raw.output.group_by, raw.output.groups, &parties)?;
        if let (Some(g), Some(dp)) = (&grouping, &dp)
            && (g.groups.len() as u64) * 2 * dp.dummy_shift() > MAX_DUMMY_ROWS
        {
            return Err(AnalysisError::TooManyDummies(dp.epsilon));
        }
        Ok(Analysis {
            name: raw.name,
            recipient: raw.recipient,
            key,
            parties,
            aggregates,
            grouping,
            expires: raw.expires,
            privacy: Privacy {
                min_matched: p.min_matched.unwrap_or(DEFAULT_MIN_MATCHED),
                dp,
                pad_to_multiple: p.pad_to_multiple,
            },
            psi,
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
    /// match count from unmaskers (step 7): twice the shift per group; 0
    /// without DP.
    pub fn dp_dummy_rows(&self) -> u64 {
        self.privacy
            .dp
            .as_ref()
            .map_or(0, |d| 2 * d.dummy_shift() * self.group_count() as u64)
    }

    /// Number of result groups (1 without `group_by`).
    pub fn group_count(&self) -> usize {
        self.grouping.as_ref().map_or(1, |g| g.groups.len())
    }

    /// The number of sums the analysis releases (per group).
    pub fn sum_count(&self) -> usize {
        self.aggregates
            .iter()
            .filter(|a| matches!(a, Aggregate::Sum { .. }))
            .count()
    }

    /// The privacy cost of one run, or `None` for an exact (non-DP) release.
    /// The count costs (ε, δ_count) once, however many groups; each sum ε
    /// (Laplace) or (ε, δ) (Gaussian). See [`PrivacyCost`].
    pub fn privacy_cost(&self) -> Option<PrivacyCost> {
        let dp = self.privacy.dp.as_ref()?;
        let k = self.sum_count() as u64;
        let per = dp.epsilon_micro();
        let sum_delta = match dp.mechanism {
            Mechanism::Laplace => 0.0,
            Mechanism::Gaussian => dp.delta.unwrap_or(0.0),
        };
        Some(PrivacyCost {
            epsilon_micro: per * (1 + k),
            delta: dp.count_delta() + k as f64 * sum_delta,
        })
    }

    /// Unix time (seconds) from which the analysis is expired, if it expires.
    pub fn expires_at(&self) -> Option<i64> {
        self.expires.as_deref().and_then(parse_date)
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

    #[test]
    fn the_protocol_is_part_of_the_hash_and_defaults_to_the_ring() {
        let a = Analysis::parse(EXAMPLE).unwrap();
        assert_eq!(a.psi, Psi::EcdhRing);
        // Naming the default changes nothing, not even the hash.
        let ring =
            Analysis::parse(&format!("{EXAMPLE}\n[protocol]\npsi = \"ecdh-ring\"\n")).unwrap();
        assert_eq!(ring.hash(), a.hash());
        let prf =
            Analysis::parse(&format!("{EXAMPLE}\n[protocol]\npsi = \"keyed-prf\"\n")).unwrap();
        assert_eq!(prf.psi, Psi::KeyedPrf);
        assert_ne!(prf.hash(), a.hash());
        match err(&format!("{EXAMPLE}\n[protocol]\npsi = \"ot\"\n")) {
            AnalysisError::Syntax(m) => {
                assert!(m.contains("\"ot\"") && m.contains("keyed-prf"), "{m}")
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            err(&format!("{EXAMPLE}\n[protocol]\nspeed = 1\n")),
            AnalysisError::Syntax(_)
        ));
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
