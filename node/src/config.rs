//! The node's configuration file (TOML). Relative paths are resolved against
//! the directory of the config file.
//!
//! ```toml
//! name = "bank-a"                      # must match this node's certificate
//! listen = "127.0.0.1:7001"
//! state_dir = "state/bank-a"
//! identity_key = "keys/bank-a.key"     # Ristretto identity (cleanroom-node keygen)
//! authorized_coordinators = ["coordinator"]
//! session_ttl_secs = 3600              # idle sessions expire (optional)
//! session_max_secs = 86400             # any session expires (optional)
//! stream_idle_secs = 120               # silent re-blind streams end (optional)
//! [tls]
//! cert = "certs/bank-a.pem"
//! key = "certs/bank-a.key"
//! ca = "certs/ca.pem"
//! [tables]
//! transfers = "data/bank-a/transfers.csv"   # .csv, .parquet, .arrow / .ipc / .feather
//! accounts = { delta = "data/bank-a/accounts" }            # Delta Lake, latest version
//! history = { delta = "s3://bank/history", version = 42 }  # or timestamp = "RFC 3339"
//! [engine]                # optional: where the local query runs
//! kind = "datafusion"     # default: embedded; or "spark-connect" (see below)
//! [peers]                 # pinned identity public keys: hex, or a file holding it
//! bank-b = "keys/bank-b.pub"
//! [policy.coordinator]    # optional, per authorized coordinator (see `policy`)
//! epsilon_budget = 10.0
//! min_matched_floor = 10
//! ```
//!
//! With `kind = "spark-connect"` the party's SQL runs on the bank's Spark
//! cluster: `remote = "sc://host:15002/;use_ssl=true;token=…"` (Spark
//! Connect's connection string), or no `remote` and the string in the
//! environment variable `SPARK_REMOTE`, which keeps a token out of the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cleanroom::protocol::PeerKeys;
use cleanroom::share::{IdentityKey, IdentityPublic};
use serde::Deserialize;

use crate::NodeError;
use crate::policy::Policy;

/// Where a table's rows come from (a `[tables]` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSource {
    /// A file: `.csv`, `.parquet`, `.arrow` / `.ipc` / `.feather`.
    File(PathBuf),
    /// A Delta Lake table: a local path or an object-store URL (`s3://`,
    /// `az://`, `abfss://`, `gs://`), read as of a version or timestamp, or
    /// its latest version at each run.
    Delta {
        /// Path or URL of the table's root.
        location: String,
        /// Which version to read.
        at: DeltaAt,
    },
}

/// The version of a Delta table a run reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaAt {
    /// The latest version when the run's local step starts.
    Latest,
    /// This version.
    Version(u64),
    /// The version current at this RFC 3339 timestamp.
    Timestamp(String),
}

impl<'de> Deserialize<'de> for TableSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Delta {
            delta: String,
            version: Option<i64>,
            timestamp: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            File(PathBuf),
            Delta(Delta),
        }
        let entry = Entry::deserialize(d).map_err(|_| {
            D::Error::custom(
                "a table is a file path or { delta = \"path or URL\" } with an optional \
                 version = N or timestamp = \"RFC 3339\"",
            )
        })?;
        Ok(match entry {
            Entry::File(p) => TableSource::File(p),
            Entry::Delta(t) => TableSource::Delta {
                at: match (t.version, t.timestamp) {
                    (None, None) => DeltaAt::Latest,
                    (Some(v), None) if v >= 0 => DeltaAt::Version(v as u64),
                    (Some(v), None) => {
                        return Err(D::Error::custom(format!(
                            "delta version must be 0 or more, not {v}"
                        )));
                    }
                    (None, Some(ts)) => {
                        timestamp_micros(&ts).map_err(D::Error::custom)?;
                        DeltaAt::Timestamp(ts)
                    }
                    (Some(_), Some(_)) => {
                        return Err(D::Error::custom(
                            "give a delta table a version or a timestamp, not both",
                        ));
                    }
                },
                location: t.delta,
            },
        })
    }
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp (a Delta
/// table's `timestamp = "…"`), checked when the config loads.
pub fn timestamp_micros(ts: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{ts:?} is not an RFC 3339 timestamp (e.g. 2026-11-01T00:00:00Z)"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| format!("{ts:?} is out of range"))
}

impl From<PathBuf> for TableSource {
    fn from(p: PathBuf) -> Self {
        TableSource::File(p)
    }
}

/// Which engine runs the party's local query (`[engine]`). Its Debug
/// output leaves out `remote`, which may hold a token.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The engine.
    #[serde(default)]
    pub kind: EngineKind,
    /// Spark Connect connection string (`sc://host:port/;param=value…`);
    /// only with `kind = "spark-connect"`, which otherwise reads
    /// `SPARK_REMOTE`.
    pub remote: Option<String>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("kind", &self.kind)
            .field("remote", &self.remote.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A local query engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// DataFusion, embedded in the node (the default).
    #[default]
    Datafusion,
    /// The bank's Spark cluster over Spark Connect.
    SparkConnect,
}

/// TLS files of the node (PEM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Leaf certificate (chain) of this node.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA that signs the certificates of authorized coordinators.
    pub ca: PathBuf,
}

/// A node's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Party name in analyses.
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the node's database (`state.db`: approvals, used session
    /// ids, budget ledger, audit log, results).
    pub state_dir: PathBuf,
    /// File holding the hex Ristretto identity secret.
    pub identity_key: PathBuf,
    /// Certificate names (DNS SAN) of coordinators allowed to call the node.
    pub authorized_coordinators: Vec<String>,
    /// TLS files.
    pub tls: TlsFiles,
    /// Table name → where its rows are (a file or a Delta table).
    #[serde(default)]
    pub tables: BTreeMap<String, TableSource>,
    /// Where the local query runs (default: embedded DataFusion).
    #[serde(default)]
    pub engine: EngineConfig,
    /// Seconds without any message of a session (received or sent) after
    /// which it expires unfinished and its secrets are dropped (default
    /// 3600).
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// Seconds after setup at which a session expires however active it is
    /// (default 86400): a coordinator cannot keep secrets alive forever.
    #[serde(default = "default_session_max")]
    pub session_max_secs: u64,
    /// Seconds a re-blind stream may stay silent before the node ends it
    /// (default 120; chunks are small, so a healthy coordinator sends one
    /// every fraction of a second).
    #[serde(default = "default_stream_idle")]
    pub stream_idle_secs: u64,
    /// Peer party name → pinned identity public key: 64 hex characters, or
    /// the path of a file that holds them (as written by `keygen`).
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    /// Per authorized coordinator identity: budget, floors, catalog
    /// visibility. An identity without an entry gets [`Policy::default`].
    #[serde(default)]
    pub policy: BTreeMap<String, Policy>,
}

fn default_stream_idle() -> u64 {
    120
}

fn default_session_max() -> u64 {
    86_400
}

fn default_session_ttl() -> u64 {
    3600
}

impl NodeConfig {
    /// Reads and validates a config file, resolving relative paths.
    pub fn load(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| match e {
            NodeError::Config(m) => NodeError::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses and validates a config's text, resolving relative paths
    /// against `base` (pinned peer keys given as files are read).
    pub fn parse(text: &str, base: &Path) -> Result<Self, NodeError> {
        let mut c: NodeConfig =
            toml::from_str(text).map_err(|e| NodeError::Config(e.message().to_string()))?;
        c.resolve(base);
        c.validate()?;
        Ok(c)
    }

    /// Makes every relative path absolute against `base`.
    pub fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        fix(&mut self.identity_key);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.ca);
        // A URL (s3://, abfss://, dbfs:/, file://, …) stays as it is: the
        // engine reads it (Spark as the cluster sees it); a path is resolved
        // like any other.
        for t in self.tables.values_mut() {
            match t {
                TableSource::File(p) => {
                    if !p.to_str().is_some_and(has_scheme) {
                        fix(p)
                    }
                }
                TableSource::Delta { location, .. } => {
                    if !has_scheme(location) && Path::new(location.as_str()).is_relative() {
                        *location = base.join(location.as_str()).display().to_string();
                    }
                }
            }
        }
        for v in self.peers.values_mut() {
            let is_hex = v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_hex && Path::new(v.as_str()).is_relative() {
                *v = base.join(v.as_str()).display().to_string();
            }
        }
    }

    /// Checks the config's internal consistency (done by [`NodeConfig::load`]).
    pub fn validate(&self) -> Result<(), NodeError> {
        if self.authorized_coordinators.is_empty() {
            return Err(NodeError::Config(
                "authorized_coordinators must name at least one coordinator".into(),
            ));
        }
        for (name, p) in &self.policy {
            if !self.authorized_coordinators.contains(name) {
                return Err(NodeError::Config(format!(
                    "policy.{name}: {name:?} is not in authorized_coordinators"
                )));
            }
            p.validate(name).map_err(NodeError::Config)?;
            for t in p.catalog_tables.iter().flatten() {
                if !self.tables.contains_key(t) {
                    return Err(NodeError::Config(format!(
                        "policy.{name}.catalog_tables: no table {t:?} in [tables]"
                    )));
                }
            }
        }
        // The idle TTL must outlast two heartbeats of a running local step.
        let min_ttl = 2 * crate::service::HEARTBEAT.as_secs();
        for (field, v, min) in [
            ("session_ttl_secs", self.session_ttl_secs, min_ttl),
            ("session_max_secs", self.session_max_secs, min_ttl),
            ("stream_idle_secs", self.stream_idle_secs, 1),
        ] {
            if v < min || v > 30 * 86_400 {
                return Err(NodeError::Config(format!(
                    "{field} must be between {min} and 2592000 seconds (30 days), not {v}"
                )));
            }
        }
        // Table names become SQL identifiers (DataFusion would read `a.b`
        // as table b of schema a).
        for name in self.tables.keys() {
            let mut chars = name.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(NodeError::Config(format!(
                    "tables.{name}: a table name is letters, digits and _, not starting with a digit"
                )));
            }
        }
        if self.engine.kind == EngineKind::Datafusion && self.engine.remote.is_some() {
            return Err(NodeError::Config(
                "engine.remote is for kind = \"spark-connect\"".into(),
            ));
        }
        crate::engine::Engine::from_config(&self.engine)?;
        self.peer_keys()?;
        Ok(())
    }

    /// The policy for a coordinator identity.
    pub fn policy_for(&self, coordinator: &str) -> Policy {
        self.policy.get(coordinator).cloned().unwrap_or_default()
    }

    /// The pinned peer keys, parsed.
    pub fn peer_keys(&self) -> Result<PeerKeys, NodeError> {
        self.peers
            .iter()
            .map(|(name, value)| {
                let text = if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    value.clone()
                } else {
                    std::fs::read_to_string(value)
                        .map_err(|e| NodeError::io(Path::new(value), e))?
                };
                IdentityPublic::from_hex(&text)
                    .map(|k| (name.clone(), k))
                    .map_err(|_| {
                        NodeError::Config(format!("peers.{name}: not a valid identity public key"))
                    })
            })
            .collect()
    }

    /// Loads the identity secret.
    pub fn identity(&self) -> Result<IdentityKey, NodeError> {
        let text = std::fs::read_to_string(&self.identity_key)
            .map_err(|e| NodeError::io(&self.identity_key, e))?;
        IdentityKey::from_hex(&text).map_err(|_| {
            NodeError::Config(format!(
                "{}: not a valid identity key",
                self.identity_key.display()
            ))
        })
    }
}

/// Whether a table location starts with a URL scheme (`s3:`, `dbfs:`, …;
/// two characters at least, so a Windows drive letter is a path).
fn has_scheme(location: &str) -> bool {
    location.split_once(':').is_some_and(|(scheme, _)| {
        scheme.len() >= 2
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<NodeConfig, NodeError> {
        let text = format!(
            "name = \"bank-a\"\nlisten = \"127.0.0.1:0\"\nstate_dir = \"s\"\nidentity_key = \"k\"\n\
             authorized_coordinators = [\"coordinator\"]\n\
             [tls]\ncert = \"c\"\nkey = \"k\"\nca = \"ca\"\n{extra}"
        );
        NodeConfig::parse(&text, Path::new("/base"))
    }

    #[test]
    fn tables_engines_and_their_errors() {
        let c = parse(
            "[tables]\nt = \"t.csv\"\nd = { delta = \"lake/d\", timestamp = \"2026-11-01T00:00:00Z\" }\n\
             s = { delta = \"s3://b/t\", version = 3 }\nf = \"dbfs:/mnt/x.parquet\"\n",
        )
        .unwrap();
        assert_eq!(c.tables["t"], TableSource::File("/base/t.csv".into()));
        // URLs are the engine's to read, not paths under the config's dir.
        assert_eq!(
            c.tables["f"],
            TableSource::File("dbfs:/mnt/x.parquet".into())
        );
        assert!(has_scheme("abfss://c@a.dfs.core.windows.net/t"));
        assert!(!has_scheme("C:\\data\\t.csv") && !has_scheme("t.csv"));
        assert_eq!(
            c.tables["d"],
            TableSource::Delta {
                location: "/base/lake/d".into(),
                at: DeltaAt::Timestamp("2026-11-01T00:00:00Z".into())
            }
        );
        assert_eq!(
            c.tables["s"],
            TableSource::Delta {
                location: "s3://b/t".into(),
                at: DeltaAt::Version(3)
            }
        );
        assert_eq!(c.engine.kind, EngineKind::Datafusion);
        for (extra, names) in [
            ("[tables]\n\"a.b\" = \"t.csv\"\n", "letters, digits and _"),
            (
                "[tables]\nd = { delta = \"d\", timestamp = \"yesterday\" }\n",
                "RFC 3339",
            ),
            (
                "[tables]\nd = { delta = \"d\", version = -1 }\n",
                "0 or more",
            ),
            ("[engine]\nremote = \"sc://h:1\"\n", "spark-connect"),
            (
                "[engine]\nkind = \"spark-connect\"\nremote = \"http://h/;token=SECRET\"\n",
                "not a Spark Connect connection string",
            ),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(e.contains(names), "{extra}: {e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
        let c = parse(
            "[engine]\nkind = \"spark-connect\"\nremote = \"sc://h:1/;use_ssl=true;token=SECRET\"\n",
        )
        .unwrap();
        assert_eq!(c.engine.kind, EngineKind::SparkConnect);
        assert!(!format!("{c:?}").contains("SECRET"), "Debug shows no token");
    }
}
