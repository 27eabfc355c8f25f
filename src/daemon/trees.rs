//! The output trees under the daemon's root, and the durable file moves into them.
//!
//! ```text
//! processed/<rule>/images/      results
//! processed/<rule>/originals/   originals, moved here once their outputs are durable
//! processed/<rule>/returns/     the external tool's processed proxies, once merged
//! metadata/<rule>/<stem>.json   provenance of each result
//! metadata/processing_log.jsonl every job transition, append-only
//! metadata/logs/                rolling log files
//! failed/<rule>/<file>          inputs that cannot be processed, with <file>.error.json
//! ```

use crate::io::atomic::{self, TEMP_PREFIX};
use crate::io::{clock, names};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Paths of the trees under one root.
#[derive(Debug, Clone)]
pub struct Trees {
    pub root: PathBuf,
}

impl Trees {
    pub fn new(root: &Path) -> Trees {
        Trees {
            root: root.to_path_buf(),
        }
    }

    pub fn images(&self, rule: &str) -> PathBuf {
        self.root.join("processed").join(rule).join("images")
    }

    pub fn originals(&self, rule: &str) -> PathBuf {
        self.root.join("processed").join(rule).join("originals")
    }

    pub fn returns(&self, rule: &str) -> PathBuf {
        self.root.join("processed").join(rule).join("returns")
    }

    pub fn metadata(&self, rule: &str) -> PathBuf {
        self.root.join("metadata").join(rule)
    }

    pub fn processing_log(&self) -> PathBuf {
        self.root.join("metadata").join("processing_log.jsonl")
    }

    pub fn failed(&self, rule: &str) -> PathBuf {
        self.root.join("failed").join(rule)
    }

    /// Every folder a rule writes into.
    pub fn rule_dirs(&self, rule: &str) -> Vec<PathBuf> {
        vec![
            self.images(rule),
            self.originals(rule),
            self.returns(rule),
            self.metadata(rule),
            self.failed(rule),
        ]
    }
}

/// Creates a folder and its parents.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Removes temp files a crash left behind in `dir` (never anything else): every darkroom
/// temp file, or with `host_tag` ([`atomic::temp_tag_of`]) only that host's. Returns how many.
pub fn remove_stale_temp_files(dir: &Path, host_tag: Option<&str>) -> usize {
    let prefix = format!("{TEMP_PREFIX}{}", host_tag.unwrap_or(""));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(&prefix)
            && entry.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Moves `from` to `to` durably: a rename (then both folders synced), or across file
/// systems a copy to a temp file in the target folder, synced and renamed, before the source
/// is removed. The source disappears only once the target is durable.
pub fn move_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    atomic::check_not_cancelled()?;
    let to_dir = atomic::parent_dir(to);
    ensure_dir(&to_dir)?;
    match std::fs::rename(from, to) {
        Ok(()) => {
            atomic::sync_dir(&to_dir)?;
            atomic::sync_dir(&atomic::parent_dir(from))
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut temp = atomic::temp_file_in(&to_dir)?;
            std::io::copy(&mut std::fs::File::open(from)?, temp.as_file_mut())?;
            temp.as_file().sync_all()?;
            let permissions = std::fs::metadata(from)?.permissions();
            std::fs::set_permissions(temp.path(), permissions)?;
            temp.persist(to).map_err(|e| e.error)?;
            atomic::sync_dir(&to_dir)?;
            std::fs::remove_file(from)?;
            atomic::sync_dir(&atomic::parent_dir(from))
        }
        Err(e) => Err(e),
    }
}

/// The version of a watched file that a job claimed: its size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedVersion {
    pub size: u64,
    pub mtime_ns: i64,
}

/// What is at a claimed file's path now, compared with the version that was claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceNow {
    AsClaimed,
    /// Another version: a writer added to it or replaced it since.
    Changed,
    Gone,
}

impl ClaimedVersion {
    pub fn of(job: &crate::daemon::journal::Job) -> ClaimedVersion {
        ClaimedVersion {
            size: job.size,
            mtime_ns: job.mtime_ns,
        }
    }

    /// Compares the file at `path` with this version (size and mtime as the intake reads
    /// them when it claims).
    pub fn compare(&self, path: &Path) -> SourceNow {
        match std::fs::metadata(path) {
            Err(_) => SourceNow::Gone,
            Ok(m) => {
                let now = crate::daemon::intake::FileStat::of(&m);
                if now.size == self.size && now.mtime_ns == self.mtime_ns {
                    SourceNow::AsClaimed
                } else {
                    SourceNow::Changed
                }
            }
        }
    }
}

/// Files a source whose outputs are durable: moves it from `from` to `to` unless it is
/// already there, but never while it is another version than `claimed` (a writer is still
/// adding to it): then it stays where it is, and the intake claims its new version as a
/// new job. Returns where the file is now.
pub fn file_source(from: &Path, to: &Path, claimed: ClaimedVersion) -> std::io::Result<PathBuf> {
    if from != to && claimed.compare(from) == SourceNow::Changed {
        tracing::warn!(
            file = %from.display(),
            "the file changed while it was processed; it stays in place and its new version is claimed as a new job"
        );
        return Ok(from.to_path_buf());
    }
    move_into_place(from, to)
}

/// Moves `from` to `to` durably unless it is already there; returns where the file is now.
pub fn move_into_place(from: &Path, to: &Path) -> std::io::Result<PathBuf> {
    if from != to {
        move_durably(from, to)?;
    }
    Ok(to.to_path_buf())
}

/// Writes `value` as pretty, newline-terminated JSON, atomically and durably.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let mut json = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    json.push('\n');
    atomic::write_atomic(path, json.as_bytes())
}

/// The `<file>.error.json` sidecar of a quarantined input.
#[derive(Debug, Serialize)]
pub struct ErrorSidecar<'a> {
    pub file: &'a str,
    pub rule: &'a str,
    pub job: i64,
    pub reason: &'a str,
    /// `permanent` (the input itself is bad), `rejected` (failed a training set's quality
    /// control) or `gave-up` (transient failures, attempts spent).
    pub kind: &'a str,
    pub attempts: u32,
    pub when: String,
    pub darkroom_version: &'a str,
    /// A rejected training image's scores and the operations that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<&'a serde_json::Value>,
}

/// Moves a failed input into `failed/<rule>/` and writes its error sidecar beside it.
/// Returns where the input now is.
pub fn quarantine(
    trees: &Trees,
    source: &Path,
    sidecar: &ErrorSidecar<'_>,
) -> std::io::Result<PathBuf> {
    let dir = trees.failed(sidecar.rule);
    ensure_dir(&dir)?;
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let target = names::free_name(&dir, &name, &crate::daemon::pairing::job_token(sidecar.job));
    if source.exists() {
        move_durably(source, &target)?;
    }
    let mut sidecar_path = target.clone().into_os_string();
    sidecar_path.push(".error.json");
    write_json_atomic(Path::new(&sidecar_path), sidecar)?;
    Ok(target)
}

/// The append-only `metadata/processing_log.jsonl`: one JSON object per job transition.
pub struct ProcessingLog {
    file: std::fs::File,
}

impl ProcessingLog {
    pub fn open(path: &Path) -> std::io::Result<ProcessingLog> {
        ensure_dir(&atomic::parent_dir(path))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(ProcessingLog { file })
    }

    /// Appends one transition. A failure to log is reported but never stops the job.
    pub fn record(&mut self, entry: serde_json::Value) {
        let mut entry = entry;
        if let Some(object) = entry.as_object_mut() {
            object.insert(
                "at".into(),
                serde_json::Value::String(clock::rfc3339(clock::now())),
            );
        }
        let mut line = entry.to_string();
        line.push('\n');
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot append to the processing log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_leaves_the_source_only_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("in.png");
        std::fs::write(&from, b"data").unwrap();
        let to = dir.path().join("sub/out.png");
        move_durably(&from, &to).unwrap();
        assert!(!from.exists());
        assert_eq!(std::fs::read(&to).unwrap(), b"data");
        assert!(move_durably(&from, &to).is_err());
        assert!(to.exists());
    }
}
