//! Durable writes: a temp file in the target folder, written, synced, renamed over the
//! target, then the folder synced. A reader never sees a half-written output, and a crash at
//! any point leaves either the old file or the new one, plus at most a hidden temp file.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Prefix of darkroom's temp files; hidden, so watchers and users skip them.
pub const TEMP_PREFIX: &str = ".darkroom-tmp-";

/// This process's mark in its temp files' names, after [`TEMP_PREFIX`]: on folders several
/// hosts share, each host removes only its own leftovers (and those of a host whose work
/// it took over).
static TEMP_TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The mark a host's temp files carry: `h` and 8 hex digits of its name's hash, then `-`.
pub fn temp_tag_of(host: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(host.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("h{hex}-")
}

/// Marks every later temp file of this process as `host`'s (once; later calls are ignored).
pub fn set_temp_host(host: &str) {
    let _ = TEMP_TAG.set(temp_tag_of(host));
}

/// The name prefix of this process's temp files.
pub fn temp_prefix() -> String {
    format!("{TEMP_PREFIX}{}", TEMP_TAG.get().map_or("", String::as_str))
}

/// A new temp file in `dir`, named with [`temp_prefix`], readable as any ordinary file
/// (0666 before the umask; tempfile's default 0600 would hide outputs from the user's
/// other tools).
pub fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&temp_prefix())
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// Set by the command line (unless `--overwrite`): publishing a file never replaces one that
/// exists. The daemon leaves it unset, since a job re-run after a crash rewrites its own
/// output under the same name.
static KEEP_EXISTING: AtomicBool = AtomicBool::new(false);

/// Makes every later publishing write in this process refuse to replace an existing file.
pub fn keep_existing_files() {
    KEEP_EXISTING.store(true, Ordering::SeqCst);
}

/// Refuses `path` when it exists and files are kept (see [`keep_existing_files`]).
pub fn check_may_replace(path: &Path) -> std::io::Result<()> {
    if KEEP_EXISTING.load(Ordering::SeqCst) && std::fs::symlink_metadata(path).is_ok() {
        return Err(already_exists());
    }
    Ok(())
}

/// The refusal; callers name the file (`OpError::write` puts the path first).
fn already_exists() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "the file already exists; pass --overwrite to replace it, or choose another output name",
    )
}

thread_local! {
    /// The running job's cancel flag (set by the daemon's worker thread around each job).
    static JOB_CANCELLED: std::cell::RefCell<Option<Arc<AtomicBool>>> = const { std::cell::RefCell::new(None) };
}

/// Ties this thread's publishing writes and moves to a job's cancel flag (`None` unties it).
/// A job the daemon set aside for running past its time limit may still wake up later; its
/// late outputs are then refused instead of appearing beside the set-aside input.
pub fn set_job_cancel_flag(flag: Option<Arc<AtomicBool>>) {
    JOB_CANCELLED.with(|c| *c.borrow_mut() = flag);
}

/// Fails once this thread's job has been cancelled. Called right before anything is
/// published (renamed into place or moved).
pub fn check_not_cancelled() -> std::io::Result<()> {
    let cancelled = JOB_CANCELLED.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    });
    if cancelled {
        return Err(std::io::Error::other(
            "the job ran past job_timeout and was set aside; its late output is dropped",
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let temp = durable_temp(&dir, bytes)?;
    check_not_cancelled()?;
    if KEEP_EXISTING.load(Ordering::SeqCst) {
        // link + unlink: fails, atomically, when the target appeared in the meantime.
        temp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                already_exists()
            } else {
                e.error
            }
        })?;
    } else {
        temp.persist(path).map_err(|e| e.error)?;
    }
    sync_dir(&dir)?;
    crate::io::traffic::note_written(bytes.len() as u64);
    Ok(())
}

/// Writes a new file at `path` from `bytes` by temp file, fsync and rename, never replacing
/// anything: an existing `path` is an `AlreadyExists` error. What watches the folder sees
/// the whole file appear at once (the temp file's name starts with [`TEMP_PREFIX`]).
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    durable_temp(&dir, bytes)?
        .persist_noclobber(path)
        .map_err(|e| e.error)?;
    sync_dir(&dir)
}

/// `bytes` in a new temp file in `dir`, synced: ready to be renamed into place.
fn durable_temp(dir: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut temp = temp_file_in(dir)?;
    temp.write_all(bytes)?;
    temp.flush()?;
    temp.as_file().sync_all()?;
    Ok(temp)
}

/// fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The folder a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_target_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.png");
        write_atomic(&target, b"first").unwrap();
        write_atomic(&target, b"second").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.png")]);
    }
}
