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
//! [peers]                 # pinned identity public keys: hex, or a file holding it
//! bank-b = "keys/bank-b.pub"
//! [policy.coordinator]    # optional, per authorized coordinator (see `policy`)
//! epsilon_budget = 10.0
//! min_matched_floor = 10
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cleanroom::protocol::PeerKeys;
use cleanroom::share::{IdentityKey, IdentityPublic};
use serde::Deserialize;

use crate::NodeError;
use crate::policy::Policy;

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
    /// Table name → data file.
    #[serde(default)]
    pub tables: BTreeMap<String, PathBuf>,
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
        self.tables.values_mut().for_each(fix);
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
