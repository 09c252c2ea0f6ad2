//! Resumability of `labelmill publish`: which input lines are confirmed, kept in a small JSON file
//! next to the input and replaced atomically.
//!
//! Lines `1..=lines_done` are confirmed by the broker. A restart skips them, so an interrupted
//! publish that stopped cleanly (SIGINT/SIGTERM: in-flight publishes are confirmed and the file
//! written before exit) publishes every line exactly once. After a crash, lines confirmed since
//! the last save (at most one save interval) are published again.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PublishError;

/// Bytes of the input hashed into its fingerprint (with its size).
const FINGERPRINT_BYTES: u64 = 1 << 20;

/// The saved progress of one input file to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The input, as given.
    pub input: String,
    /// SHA-256 of the input's size and first MiB: a different file is not resumed.
    pub fingerprint: String,
    /// `kafka:<topic>` or `amqp:<queue>`.
    pub destination: String,
    /// Lines `1..=lines_done` are confirmed (empty lines count, and are skipped).
    pub lines_done: u64,
    /// Messages confirmed, over all runs.
    pub published: u64,
    /// The whole file is confirmed.
    pub complete: bool,
}

/// The state file used for `input` unless one is given.
pub fn default_path(input: &Path) -> PathBuf {
    let mut name = input.file_name().unwrap_or_default().to_os_string();
    name.push(".publish-state.json");
    input.with_file_name(name)
}

/// A fingerprint of the file at `path`.
pub fn fingerprint(path: &Path) -> Result<String, PublishError> {
    let io = |source| PublishError::Input {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut head = Vec::new();
    f.take(FINGERPRINT_BYTES)
        .read_to_end(&mut head)
        .map_err(io)?;
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    h.update(&head);
    Ok(format!("{:x}", h.finalize()))
}

/// Reads the state at `path`; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Progress>, PublishError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PublishError::State {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PublishError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Writes `p` to `path` atomically (temporary file, fsync, rename).
pub fn save(path: &Path, p: &Progress) -> Result<(), PublishError> {
    let err = |e: std::io::Error| PublishError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&serde_json::to_vec_pretty(p).expect("progress serialises"))
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The longest prefix of lines that are all confirmed, when confirmations arrive out of order.
#[derive(Debug, Default)]
pub struct Prefix {
    done: u64,
    ahead: BTreeSet<u64>,
}

impl Prefix {
    /// Starts after `done` lines.
    pub fn after(done: u64) -> Self {
        Self {
            done,
            ahead: BTreeSet::new(),
        }
    }

    /// Line `n` (1-based) is confirmed.
    pub fn confirm(&mut self, n: u64) {
        if n <= self.done {
            return;
        }
        self.ahead.insert(n);
        while self.ahead.remove(&(self.done + 1)) {
            self.done += 1;
        }
    }

    /// Lines `1..=done()` are all confirmed.
    pub fn done(&self) -> u64 {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_only_grows_over_contiguous_confirmations() {
        let mut p = Prefix::after(10);
        p.confirm(12);
        p.confirm(13);
        assert_eq!(p.done(), 10, "11 is not confirmed yet");
        p.confirm(11);
        assert_eq!(p.done(), 13);
        p.confirm(5);
        assert_eq!(p.done(), 13, "lines before the start are ignored");
        p.confirm(15);
        assert_eq!(p.done(), 13);
    }

    #[test]
    fn state_round_trips_and_fingerprints_differ_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("docs.jsonl");
        std::fs::write(&input, "{\"id\":1}\n").unwrap();
        let state = default_path(&input);
        assert_eq!(state, dir.path().join("docs.jsonl.publish-state.json"));
        assert_eq!(load(&state).unwrap(), None);
        let p = Progress {
            input: input.display().to_string(),
            fingerprint: fingerprint(&input).unwrap(),
            destination: "kafka:docs".into(),
            lines_done: 1,
            published: 1,
            complete: true,
        };
        save(&state, &p).unwrap();
        assert_eq!(load(&state).unwrap(), Some(p.clone()));
        std::fs::write(&input, "{\"id\":2}\n").unwrap();
        assert_ne!(fingerprint(&input).unwrap(), p.fingerprint);
    }
}
