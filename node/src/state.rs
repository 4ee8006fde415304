//! The node's state directory: approved analyses, used session ids, results.
//!
//! ```text
//! STATE/approvals/<hash>.toml   analysis text, approved by this bank
//! STATE/sessions                one used session id (hex) per line, fsynced
//! STATE/results/<sid>.json      releases received as recipient
//! ```

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cleanroom::protocol::Release;
use cleanroom::{Analysis, AnalysisHash, SessionId};

use crate::NodeError;

/// Handle on a node's state directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    used: Mutex<HashSet<SessionId>>,
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| NodeError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| NodeError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| NodeError::io(path, e))
}

impl StateDir {
    /// Opens (creating if needed) a state directory.
    pub fn open(root: &Path) -> Result<Self, NodeError> {
        for d in ["approvals", "results"] {
            fs::create_dir_all(root.join(d)).map_err(|e| NodeError::io(&root.join(d), e))?;
        }
        let sessions = root.join("sessions");
        let used = match fs::read_to_string(&sessions) {
            Ok(t) => t.lines().filter_map(SessionId::from_hex).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(NodeError::io(&sessions, e)),
        };
        Ok(StateDir {
            root: root.to_path_buf(),
            used: Mutex::new(used),
        })
    }

    fn approval_path(&self, hash: &AnalysisHash) -> PathBuf {
        self.root.join("approvals").join(format!("{hash}.toml"))
    }

    /// Records `text` (a valid analysis naming `party`) as approved.
    pub fn approve(&self, text: &str, party: &str) -> Result<AnalysisHash, NodeError> {
        let analysis = Analysis::parse(text)?;
        if analysis.party_index(party).is_none() {
            return Err(NodeError::NotAParty(party.to_string()));
        }
        let hash = analysis.hash();
        write_durably(&self.approval_path(&hash), text.as_bytes())?;
        Ok(hash)
    }

    /// Whether an analysis hash is approved here.
    pub fn is_approved(&self, hash: &AnalysisHash) -> bool {
        self.approval_path(hash).is_file()
    }

    /// Marks a session id as used; fails if it was used before (even before a
    /// restart: the list is on disk).
    pub fn claim_session(&self, sid: &SessionId) -> Result<(), NodeError> {
        let mut used = self.used.lock().expect("state lock poisoned");
        if used.contains(sid) {
            return Err(NodeError::SessionReused(sid.to_hex()));
        }
        let path = self.root.join("sessions");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| NodeError::io(&path, e))?;
        writeln!(f, "{}", sid.to_hex())
            .and_then(|_| f.sync_all())
            .map_err(|e| NodeError::io(&path, e))?;
        used.insert(*sid);
        Ok(())
    }

    /// Stores a release durably; returns its path.
    pub fn store_result(&self, release: &Release) -> Result<PathBuf, NodeError> {
        let path = self
            .root
            .join("results")
            .join(format!("{}.json", release.sid));
        let json = serde_json::to_vec_pretty(release).expect("release serializes");
        write_durably(&path, &json)?;
        Ok(path)
    }

    /// All stored results, oldest first.
    pub fn results(&self) -> Result<Vec<Release>, NodeError> {
        let dir = self.root.join("results");
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| NodeError::io(&dir, e))?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .collect();
        entries.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        entries.iter().map(|e| read_release(&e.path())).collect()
    }

    /// One stored result by session id.
    pub fn result(&self, sid: &SessionId) -> Result<Release, NodeError> {
        let path = self
            .root
            .join("results")
            .join(format!("{}.json", sid.to_hex()));
        if !path.is_file() {
            return Err(NodeError::NoResult(sid.to_hex()));
        }
        read_release(&path)
    }
}

fn read_release(path: &Path) -> Result<Release, NodeError> {
    let bytes = fs::read(path).map_err(|e| NodeError::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))
}
