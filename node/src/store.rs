//! The node's datastore: one SQLite database, `STATE/state.db`, holding
//! approvals, used session ids, the privacy-budget ledger, the hash-chained
//! audit log and released results.
//!
//! Every state change is one `BEGIN IMMEDIATE` transaction that also appends
//! its audit record, so the ledger and the log never disagree: a debit and
//! its record commit together, before the node answers. The database runs in
//! WAL mode with `synchronous = FULL`, so a committed change survives a
//! crash or power loss. The CLI (`approve`, `revoke`, …) and a serving node
//! may use the same state directory at once.
//!
//! A state directory written by cleanroom 0.1 (loose files: `approvals/`,
//! `sessions`, `results/`) is migrated on first open, in one transaction; the
//! old files are moved to `STATE/legacy-files/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cleanroom::analysis::PrivacyCost;
use cleanroom::protocol::{Release, ReleaseRow, ReleasedValue};
use cleanroom::{Analysis, AnalysisHash, SessionId};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Deserialize;

use crate::NodeError;
use crate::audit::{self, Event, Record, Stored};
use crate::clock::{Clock, rfc3339};
use crate::policy::{Policy, Spent};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "state.db";
/// Schema version this build writes (SQLite `user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE approvals (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE sessions (
    sid TEXT PRIMARY KEY,
    analysis_hash TEXT NOT NULL,
    coordinator TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    closed_at TEXT,
    outcome TEXT
);
CREATE TABLE ledger (
    sid TEXT PRIMARY KEY,
    coordinator TEXT NOT NULL,
    analysis_hash TEXT NOT NULL,
    epsilon_micro INTEGER NOT NULL,
    delta REAL NOT NULL,
    exact INTEGER NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX ledger_by_coordinator ON ledger (coordinator);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE results (
    sid TEXT PRIMARY KEY,
    analysis_hash TEXT NOT NULL,
    stored_at TEXT NOT NULL,
    release TEXT NOT NULL
);
";

/// An approved (or revoked) analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    /// Its hash.
    pub hash: AnalysisHash,
    /// The analysis as approved.
    pub analysis: Analysis,
    /// The approved text.
    pub text: String,
    /// When it was approved (RFC 3339).
    pub approved_at: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
}

/// Handle on a node's state directory.
pub struct Store {
    conn: Mutex<Connection>,
    root: PathBuf,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

fn db(e: rusqlite::Error) -> NodeError {
    NodeError::Store(e.to_string())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

/// Appends `rec` to the audit chain inside `tx`.
fn append(tx: &Transaction<'_>, rec: &Record) -> Result<(), NodeError> {
    let last: Option<(u64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    let (seq, prev) = match last {
        Some((s, h)) => {
            let prev: [u8; 32] = hex::decode(&h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| NodeError::Store(format!("audit record {s} has a bad hash")))?;
            (s + 1, prev)
        }
        None => (1, audit::GENESIS),
    };
    let json = to_json(rec)?;
    let hash = audit::chain_hash(seq, &prev, &json);
    tx.execute(
        "INSERT INTO audit (seq, record, prev_hash, hash) VALUES (?1, ?2, ?3, ?4)",
        params![seq, json, hex::encode(prev), hex::encode(hash)],
    )
    .map_err(db)?;
    Ok(())
}

impl Store {
    /// Opens (creating, or migrating from loose files, if needed) the state
    /// directory `root`.
    pub fn open(root: &Path, clock: Arc<dyn Clock>) -> Result<Self, NodeError> {
        std::fs::create_dir_all(root).map_err(|e| NodeError::io(root, e))?;
        let path = root.join(DB_FILE);
        let mut conn = Connection::open(&path)
            .map_err(|e| NodeError::Store(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(NodeError::Store(format!(
                "{}: cannot switch to WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(db)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        if version > SCHEMA_VERSION {
            return Err(NodeError::Store(format!(
                "{} has schema version {version}; this cleanroom-node understands up to {SCHEMA_VERSION}: upgrade the binary",
                path.display()
            )));
        }
        if version == 0 {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            // Another process may have created it meanwhile.
            let v: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(db)?;
            if v == 0 {
                tx.execute_batch(SCHEMA).map_err(db)?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                    .map_err(db)?;
            }
            tx.commit().map_err(db)?;
        }
        let store = Store {
            conn: Mutex::new(conn),
            root: root.to_path_buf(),
            clock,
        };
        store.migrate_loose_files()?;
        Ok(store)
    }

    /// [`Store::open`] with the system clock (CLI tools, tests).
    pub fn at(root: &Path) -> Result<Self, NodeError> {
        Self::open(root, crate::clock::SystemClock::shared())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one immediate transaction and commits.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let out = f(&tx)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// Now, as RFC 3339 (for records).
    pub fn now(&self) -> String {
        rfc3339(self.clock.unix_now())
    }

    /// Unix time now, from the store's clock.
    pub fn unix_now(&self) -> i64 {
        self.clock.unix_now()
    }

    /// A fresh record of `event`, timed now.
    pub fn record(&self, event: Event) -> Record {
        Record::new(event, self.now())
    }

    /// Appends one record in its own transaction.
    pub fn log(&self, rec: &Record) -> Result<(), NodeError> {
        self.write(|tx| append(tx, rec))
    }

    // ------------------------------------------------------------ approvals

    /// Records `text` (a valid analysis naming `party`) as approved.
    pub fn approve(&self, text: &str, party: &str) -> Result<AnalysisHash, NodeError> {
        let analysis = Analysis::parse(text)?;
        if analysis.party_index(party).is_none() {
            return Err(NodeError::NotAParty(party.to_string()));
        }
        let hash = analysis.hash();
        let now = self.now();
        let mut rec = Record::new(Event::Approve, now.clone());
        rec.analysis_hash = Some(hash.to_hex());
        rec.analysis = Some(analysis.name.clone());
        rec.coordinator = Some("local operator".into());
        self.write(|tx| {
            tx.execute(
                "INSERT INTO approvals (hash, name, text, approved_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, NULL)
                 ON CONFLICT (hash) DO UPDATE SET approved_at = ?4, revoked_at = NULL",
                params![hash.to_hex(), analysis.name, text, now],
            )
            .map_err(db)?;
            append(tx, &rec)
        })?;
        Ok(hash)
    }

    /// Revokes an approval: the analysis is refused from now on.
    pub fn revoke(&self, hash: &AnalysisHash) -> Result<(), NodeError> {
        let now = self.now();
        let mut rec = Record::new(Event::Revoke, now.clone());
        rec.analysis_hash = Some(hash.to_hex());
        rec.coordinator = Some("local operator".into());
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE approvals SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
                    params![hash.to_hex(), now],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(NodeError::NotApproved(hash.to_hex()));
            }
            append(tx, &rec)
        })
    }

    fn approval_from_row(
        r: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<(String, String, String, Option<String>)> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    }

    fn to_approval(
        (hash, text, approved_at, revoked_at): (String, String, String, Option<String>),
    ) -> Result<Approval, NodeError> {
        let analysis = Analysis::parse(&text)?;
        Ok(Approval {
            hash: AnalysisHash::from_hex(&hash)
                .ok_or_else(|| NodeError::Store(format!("bad approval hash {hash}")))?,
            analysis,
            text,
            approved_at,
            revoked_at,
        })
    }

    /// The approval of `hash`, if any (revoked ones included).
    pub fn approval(&self, hash: &AnalysisHash) -> Result<Option<Approval>, NodeError> {
        let row = self
            .conn()
            .query_row(
                "SELECT hash, text, approved_at, revoked_at FROM approvals WHERE hash = ?1",
                [hash.to_hex()],
                Self::approval_from_row,
            )
            .optional()
            .map_err(db)?;
        row.map(Self::to_approval).transpose()
    }

    /// Every approval, oldest first.
    pub fn approvals(&self) -> Result<Vec<Approval>, NodeError> {
        let rows: Vec<_> = {
            let conn = self.conn();
            let mut st = conn
                .prepare(
                    "SELECT hash, text, approved_at, revoked_at FROM approvals ORDER BY approved_at, hash",
                )
                .map_err(db)?;
            st.query_map([], Self::approval_from_row)
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?
        };
        rows.into_iter().map(Self::to_approval).collect()
    }

    // ------------------------------------------------------------- sessions

    /// Claims `sid` for `coordinator` and records the setup, in one
    /// transaction; fails if the sid was ever used here.
    pub fn open_session(&self, rec: &Record) -> Result<(), NodeError> {
        let sid = rec.sid.clone().unwrap_or_default();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO sessions (sid, analysis_hash, coordinator, opened_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    sid,
                    rec.analysis_hash.clone().unwrap_or_default(),
                    rec.coordinator.clone().unwrap_or_default(),
                    rec.time
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    NodeError::SessionReused(sid.clone())
                } else {
                    db(e)
                }
            })?;
            append(tx, rec)
        })
    }

    /// Whether `sid` was ever used here.
    pub fn session_used(&self, sid: &SessionId) -> Result<bool, NodeError> {
        self.conn()
            .query_row(
                "SELECT 1 FROM sessions WHERE sid = ?1",
                [sid.to_hex()],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(db)
    }

    /// Marks a session closed (finished, aborted, expired) with its record.
    ///
    /// An abort or expiry says in its outcome whether a result had been
    /// stored for the session before it ended (read in the same
    /// transaction): "…; nothing released" or "…; its result had already
    /// been stored".
    pub fn close_session(&self, rec: &Record) -> Result<(), NodeError> {
        let sid = rec.sid.clone().unwrap_or_default();
        self.write(|tx| {
            let mut rec = rec.clone();
            if matches!(rec.event, Event::Abort | Event::Expire) {
                let stored: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM results WHERE sid = ?1)",
                        params![sid],
                        |r| r.get(0),
                    )
                    .map_err(db)?;
                rec.outcome = format!(
                    "{}; {}",
                    rec.outcome,
                    if stored {
                        "its result had already been stored"
                    } else {
                        "nothing released"
                    }
                );
            }
            let changed = tx
                .execute(
                    "UPDATE sessions SET closed_at = ?2, outcome = ?3 WHERE sid = ?1 AND closed_at IS NULL",
                    params![sid, rec.time, rec.outcome],
                )
                .map_err(db)?;
            // A session ends once: a second end (finish racing expiry or
            // shutdown) records nothing.
            if changed == 1 {
                append(tx, &rec)?;
            }
            Ok(())
        })
    }

    // --------------------------------------------------------------- ledger

    /// What `coordinator` has spent here.
    pub fn spent(&self, coordinator: &str) -> Result<Spent, NodeError> {
        spent_in(&self.conn(), coordinator)
    }

    /// Every identity in the ledger with what it spent.
    pub fn ledger(&self) -> Result<Vec<(String, Spent)>, NodeError> {
        let names: Vec<String> = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT DISTINCT coordinator FROM ledger ORDER BY coordinator")
                .map_err(db)?;
            st.query_map([], |r| r.get(0))
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?
        };
        names
            .into_iter()
            .map(|n| Ok((n.clone(), self.spent(&n)?)))
            .collect()
    }

    /// Debits the run's cost (`None`: an exact, non-DP release) from the
    /// coordinator's budget under `policy`, with its audit record, in one
    /// transaction. If the budget does not cover it, records the refusal
    /// instead and returns it. Called before any data is read.
    pub fn debit(
        &self,
        rec: &Record,
        cost: Option<&PrivacyCost>,
        policy: &Policy,
    ) -> Result<(), NodeError> {
        let coordinator = rec.coordinator.clone().unwrap_or_default();
        let refusal = self.write(|tx| {
            let spent = spent_in(tx, &coordinator)?;
            if let Err(refusal) = policy.afford(&coordinator, &spent, cost) {
                let mut r = rec.clone();
                r.event = Event::Refused;
                r.outcome = "budget exhausted".into();
                append(tx, &r)?;
                return Ok(Some(refusal));
            }
            tx.execute(
                "INSERT INTO ledger (sid, coordinator, analysis_hash, epsilon_micro, delta, exact, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    rec.sid.clone().unwrap_or_default(),
                    coordinator,
                    rec.analysis_hash.clone().unwrap_or_default(),
                    cost.map_or(0, |c| c.epsilon_micro) as i64,
                    cost.map_or(0.0, |c| c.delta),
                    cost.is_none(),
                    rec.time
                ],
            )
            .map_err(db)?;
            let mut r = rec.clone();
            r.epsilon = cost.map(PrivacyCost::epsilon);
            r.delta = cost.map(|c| c.delta);
            if cost.is_none() {
                r.outcome = "ok (exact release, no DP)".into();
            }
            append(tx, &r)?;
            Ok(None)
        })?;
        match refusal {
            Some(r) => Err(NodeError::Policy(r)),
            None => Ok(()),
        }
    }

    // -------------------------------------------------------------- results

    /// Stores a release and its audit record in one transaction; returns the
    /// name under which it is stored.
    ///
    /// Refuses ([`NodeError::SessionEnded`]) when the session was closed
    /// (aborted, expired, shut down) before: checked in the same
    /// transaction, so a release never follows an end that said nothing was
    /// released.
    pub fn store_result(&self, release: &Release, rec: &Record) -> Result<String, NodeError> {
        let json = to_json(release)?;
        self.write(|tx| {
            let open: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sessions WHERE sid = ?1 AND closed_at IS NULL)",
                    params![release.sid],
                    |r| r.get(0),
                )
                .map_err(db)?;
            if !open {
                return Err(NodeError::SessionEnded(release.sid.clone()));
            }
            tx.execute(
                "INSERT INTO results (sid, analysis_hash, stored_at, release) VALUES (?1, ?2, ?3, ?4)",
                params![release.sid, release.analysis_hash, rec.time, json],
            )
            .map_err(db)?;
            append(tx, rec)
        })?;
        Ok(format!("results/{}", release.sid))
    }

    /// All stored results, oldest first.
    pub fn results(&self) -> Result<Vec<Release>, NodeError> {
        let rows: Vec<String> = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT release FROM results ORDER BY stored_at, rowid")
                .map_err(db)?;
            st.query_map([], |r| r.get(0))
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?
        };
        rows.iter().map(|j| parse_release(j)).collect()
    }

    /// One stored result by session id.
    pub fn result(&self, sid: &SessionId) -> Result<Release, NodeError> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT release FROM results WHERE sid = ?1",
                [sid.to_hex()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        parse_release(&json.ok_or_else(|| NodeError::NoResult(sid.to_hex()))?)
    }

    // ---------------------------------------------------------------- audit

    /// The audit chain as stored, in sequence order.
    pub fn audit_chain(&self) -> Result<Vec<Stored>, NodeError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT seq, record, prev_hash, hash FROM audit ORDER BY seq")
            .map_err(db)?;
        st.query_map([], |r| {
            Ok(Stored {
                seq: r.get(0)?,
                json: r.get(1)?,
                prev_hash: r.get(2)?,
                hash: r.get(3)?,
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)
    }

    /// Path of the database file (for tools and tests).
    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }

    // ------------------------------------------------------------ migration

    fn migrate_loose_files(&self) -> Result<(), NodeError> {
        let approvals = self.root.join("approvals");
        let sessions = self.root.join("sessions");
        let results = self.root.join("results");
        if !approvals.is_dir() && !sessions.is_file() && !results.is_dir() {
            return Ok(());
        }
        let mut texts = Vec::new();
        for entry in read_dir(&approvals)? {
            if entry.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&entry).map_err(|e| NodeError::io(&entry, e))?;
                let analysis = Analysis::parse(&text).map_err(|e| {
                    NodeError::Store(format!(
                        "cannot migrate {}: {e}; fix or remove it and start again",
                        entry.display()
                    ))
                })?;
                texts.push((analysis, text));
            }
        }
        let sids: Vec<String> = match std::fs::read_to_string(&sessions) {
            Ok(t) => t
                .lines()
                .filter_map(SessionId::from_hex)
                .map(|s| s.to_hex())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(NodeError::io(&sessions, e)),
        };
        let mut releases = Vec::new();
        for entry in read_dir(&results)? {
            if entry.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&entry).map_err(|e| NodeError::io(&entry, e))?;
                releases.push(parse_release(&text).map_err(|e| {
                    NodeError::Store(format!("cannot migrate {}: {e}", entry.display()))
                })?);
            }
        }
        let now = self.now();
        let mut rec = Record::new(Event::Migrate, now.clone());
        rec.coordinator = Some("local operator".into());
        rec.outcome = format!(
            "migrated {} approvals, {} session ids and {} results from cleanroom 0.1 files",
            texts.len(),
            sids.len(),
            releases.len()
        );
        self.write(|tx| {
            for (a, text) in &texts {
                tx.execute(
                    "INSERT OR IGNORE INTO approvals (hash, name, text, approved_at) VALUES (?1, ?2, ?3, ?4)",
                    params![a.hash().to_hex(), a.name, text, now],
                )
                .map_err(db)?;
            }
            for sid in &sids {
                tx.execute(
                    "INSERT OR IGNORE INTO sessions (sid, analysis_hash, coordinator, opened_at, closed_at, outcome)
                     VALUES (?1, '', '', ?2, ?2, 'used before migration')",
                    params![sid, now],
                )
                .map_err(db)?;
            }
            for r in &releases {
                tx.execute(
                    "INSERT OR IGNORE INTO results (sid, analysis_hash, stored_at, release) VALUES (?1, ?2, ?3, ?4)",
                    params![r.sid, r.analysis_hash, now, to_json(r)?],
                )
                .map_err(db)?;
            }
            append(tx, &rec)
        })?;
        let legacy = self.root.join("legacy-files");
        std::fs::create_dir_all(&legacy).map_err(|e| NodeError::io(&legacy, e))?;
        for p in [approvals, sessions, results] {
            if p.exists() {
                let to = legacy.join(p.file_name().unwrap_or_default());
                std::fs::rename(&p, &to).map_err(|e| NodeError::io(&p, e))?;
            }
        }
        Ok(())
    }
}

fn spent_in(conn: &Connection, coordinator: &str) -> Result<Spent, NodeError> {
    conn.query_row(
        "SELECT COALESCE(SUM(epsilon_micro), 0), COALESCE(SUM(delta), 0.0),
                COALESCE(SUM(exact), 0), COALESCE(SUM(1 - exact), 0)
         FROM ledger WHERE coordinator = ?1",
        [coordinator],
        |r| {
            Ok(Spent {
                epsilon_micro: r.get::<_, i64>(0)? as u64,
                delta: r.get(1)?,
                exact_runs: r.get::<_, i64>(2)? as u64,
                dp_runs: r.get::<_, i64>(3)? as u64,
            })
        },
    )
    .map_err(db)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(NodeError::io(dir, e)),
    }
}

/// A release as written by cleanroom 0.1 (one flat list of values).
#[derive(Deserialize)]
struct LegacyRelease {
    analysis: String,
    analysis_hash: String,
    sid: String,
    noisy: bool,
    values: Vec<ReleasedValue>,
}

fn parse_release(json: &str) -> Result<Release, NodeError> {
    if let Ok(r) = serde_json::from_str::<Release>(json) {
        return Ok(r);
    }
    let old: LegacyRelease = serde_json::from_str(json)
        .map_err(|e| NodeError::Store(format!("stored result is not valid: {e}")))?;
    Ok(Release {
        analysis: old.analysis,
        analysis_hash: old.analysis_hash,
        sid: old.sid,
        noisy: old.noisy,
        group_by: None,
        rows: vec![ReleaseRow {
            group: None,
            suppressed: false,
            values: old.values,
        }],
    })
}

/// JSON of a record or release for the database.
fn to_json<T: serde::Serialize>(v: &T) -> Result<String, NodeError> {
    serde_json::to_string(v).map_err(|e| NodeError::Store(format!("cannot encode as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn session_record(store: &Store, event: Event, sid: &str) -> Record {
        let mut r = store.record(event);
        r.sid = Some(sid.to_string());
        r.analysis_hash = Some("00".repeat(32));
        r.coordinator = Some("coordinator".into());
        r
    }

    fn release(sid: &str) -> Release {
        Release {
            analysis: "t".into(),
            analysis_hash: "00".repeat(32),
            sid: sid.into(),
            noisy: false,
            group_by: None,
            rows: Vec::new(),
        }
    }

    fn outcomes(store: &Store) -> Vec<String> {
        store
            .audit_chain()
            .unwrap()
            .iter()
            .map(|s| serde_json::from_str::<Record>(&s.json).unwrap().outcome)
            .collect()
    }

    /// A result is stored only while its session is open; an end says
    /// whether a result had been stored before it.
    #[test]
    fn results_only_for_open_sessions_and_ends_say_what_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SystemClock::shared()).unwrap();
        let (a, b) = ("aa".repeat(32), "bb".repeat(32));
        for sid in [&a, &b] {
            store
                .open_session(&session_record(&store, Event::Setup, sid))
                .unwrap();
        }
        // Session a is aborted (say, by shutdown) before its delivery.
        let mut abort = session_record(&store, Event::Abort, &a);
        abort.outcome = "node shut down".into();
        store.close_session(&abort).unwrap();
        let rec = session_record(&store, Event::Release, &a);
        assert!(matches!(
            store.store_result(&release(&a), &rec),
            Err(NodeError::SessionEnded(s)) if s == a
        ));
        // Session b delivers, then expires unfinished.
        let rec = session_record(&store, Event::Release, &b);
        store.store_result(&release(&b), &rec).unwrap();
        let mut expire = session_record(&store, Event::Expire, &b);
        expire.outcome = "expired unfinished".into();
        store.close_session(&expire).unwrap();
        let out = outcomes(&store);
        assert!(
            out.contains(&"node shut down; nothing released".to_string()),
            "{out:?}"
        );
        assert!(
            out.contains(&"expired unfinished; its result had already been stored".to_string()),
            "{out:?}"
        );
        assert_eq!(store.results().unwrap().len(), 1);
    }
}
